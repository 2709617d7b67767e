//! `WWW-Authenticate` values a registry sends never panic the challenge parser, and a Bearer
//! challenge it accepts always names a realm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullcheck::registry::{Challenge, parse_challenge};

fuzz_target!(|data: &[u8]| {
    // reqwest hands the header over as bytes; only a UTF-8 value reaches the parser.
    let Ok(header) = std::str::from_utf8(data) else { return };
    if let Some(challenge) = parse_challenge(header) {
        let _ = challenge.insufficient_scope();
        if let Challenge::Bearer { realm, .. } = &challenge {
            assert!(header.to_ascii_lowercase().contains("realm"), "{header:?} gave realm {realm:?}");
        }
    }
});
