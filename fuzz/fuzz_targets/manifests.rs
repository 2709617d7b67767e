//! Manifest streams (YAML and JSON) never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullcheck::sources::manifests::{FileInventory, parse_stream};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut inventory = FileInventory::default();
    parse_stream(text, "fuzz.yaml", &mut inventory);
});
