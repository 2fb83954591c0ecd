//! Waits for a file to appear, such as a daemon's socket, with inotify.
//!
//! A collector whose runtime is not there yet (no socket) is looked for again every re-detection
//! period (30 s by default). A runtime started a moment after the agent would wait that long to be
//! seen; watching the socket's directory ends the wait as soon as the socket is created. When the
//! directory itself is missing, the nearest directory above it that exists is watched instead,
//! and the watch moves down as directories appear. Should inotify be unavailable (its limits
//! reached), the wait simply never ends early: the re-detection period still applies.

use std::path::Path;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};

/// Returns once `path` exists; never, when it cannot be watched.
pub(crate) async fn appears(path: &Path) {
    loop {
        if path.exists() {
            return;
        }
        let Some(dir) = path.ancestors().skip(1).find(|a| a.is_dir()) else {
            return std::future::pending().await;
        };
        let Some(mut events) = watch(dir) else {
            return std::future::pending().await;
        };
        // Looked at again once the watch is armed, so that a file created in between is seen.
        if path.exists() {
            return;
        }
        // Any creation in the directory: look again (the file, or a directory on its way).
        match events.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return std::future::pending().await,
        }
    }
}

/// Watches `dir` for entries created or moved into it.
fn watch(dir: &Path) -> Option<inotify::EventStream<[u8; 1024]>> {
    let inotify = Inotify::init().ok()?;
    inotify.watches().add(dir, WatchMask::CREATE | WatchMask::MOVED_TO).ok()?;
    inotify.into_event_stream([0u8; 1024]).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_file_created_in_a_missing_directory_ends_the_wait() {
        let dir = std::env::temp_dir().join(format!("wm-appear-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.join("run/daemon/daemon.sock");
        let waiting = tokio::spawn({
            let socket = socket.clone();
            async move { appears(&socket).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "nothing there yet");
        std::fs::create_dir_all(socket.parent().unwrap_or(&dir)).unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the directory alone does not end the wait");
        std::fs::write(&socket, b"").unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap_or_else(|_| panic!("the wait did not end once the file appeared"))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
