//! containerd `hosts.toml` files never panic the parser, nor the endpoints and request URLs
//! built from what it accepts.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pullcheck::config::hosts::HostsDir;

// Files a hosts.toml names are looked for here: none exist, so a `ca` or `client` is an error.
const ROOT: &str = "/nonexistent/pullcheck-fuzz/certs.d";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for registry in ["registry.example:5000", "docker.io", "localhost:5000"] {
        let Ok(dir) = HostsDir::from_hosts_toml(Path::new(ROOT), registry, text) else { return };
        let _ = dir.configured_hosts();
        let endpoints = dir.endpoints(registry).unwrap_or_default();
        assert!(!endpoints.is_empty(), "{registry}: no endpoints from {text:?}");
        for endpoint in endpoints {
            let _ = (endpoint.resolves_tags(), endpoint.pulls_digests(), endpoint.is_proxy_for(registry));
            let _ = endpoint.request_url(registry, "library/app/manifests/latest");
            let _ = endpoint.fallback_request_url(registry, "library/app/manifests/latest");
        }
    }
});
