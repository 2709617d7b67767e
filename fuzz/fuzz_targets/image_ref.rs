//! Image reference parsing never panics, and what it accepts is canonical on a second parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullcheck::image::ImageRef;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    if let Ok(reference) = ImageRef::parse(input) {
        let canonical = reference.to_string();
        assert_eq!(ImageRef::parse(&canonical).as_ref(), Ok(&reference), "{input:?} → {canonical}");
        let _ = (reference.name(), reference.manifest_reference(), reference.api_host());
    }
});
