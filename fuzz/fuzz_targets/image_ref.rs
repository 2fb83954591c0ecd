//! Image references (`ContainerImage::parse`): any text; parsing its own raw name again gives
//! the same image, and the short name ends its name.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let image = wm_core::ContainerImage::parse(text);
    assert_eq!(wm_core::ContainerImage::parse(&image.raw_name), image);
    assert!(image.name.ends_with(&image.short_name), "{image:?}");
});
