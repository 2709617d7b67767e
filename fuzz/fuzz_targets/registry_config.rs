//! The registry config YAML (`--registry-config`) never panics the parser, nor what reads the
//! config it accepts.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pullcheck::config::RegistryConfig;

// Files the config names are looked for here: none exist, so naming one is an error.
const BASE: &str = "/nonexistent/pullcheck-fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = RegistryConfig::parse(text, "fuzz.yaml", Path::new(BASE)) else { return };
    for host in config.configured_hosts() {
        let _ = config.host(&host).transport(&host);
    }
    for reference in ["app", "team/app:1.0", "k8s.gcr.io/pause:3.9", "localhost:5000/app"] {
        if let Ok(image) = config.parse_image(reference) {
            let _ = (config.credential_for(&image), config.replacement(&image));
            let _ = config.host(image.registry()).transport(image.registry());
        }
    }
});
