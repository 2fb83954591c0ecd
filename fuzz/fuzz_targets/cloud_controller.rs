//! The Cloud Controller's `/v3/apps` pages and the UAA's token answers: any bytes. A page gives
//! apps with non-empty GUIDs; a token is never empty and is used for a day at most, so a huge
//! `expires_in` cannot overflow the deadline.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wm_collector_cf::cc::{apps_page, uaa_token};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(page) = apps_page(bytes) {
        assert!(page.apps.keys().all(|guid| !guid.is_empty()));
        assert!(page.next.as_deref().is_none_or(|n| !n.is_empty()));
    }
    if let Ok((token, lifetime)) = uaa_token(bytes) {
        assert!(!token.is_empty());
        assert!(lifetime <= Duration::from_secs(24 * 3600));
        let _ = std::time::Instant::now() + lifetime;
    }
});
