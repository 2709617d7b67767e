//! Docker config JSON (`kubernetes.io/dockerconfigjson` and `dockercfg` pull secrets, the
//! registry config's `dockerConfig`) never panics the parser, nor kubelet's matching of its
//! registry patterns against images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullcheck::credentials::DockerCredentials;
use pullcheck::image::ImageRef;

const IMAGES: &[&str] = &[
    "busybox",
    "registry.example:5000/team/app:1.0",
    "eu.gcr.io/project/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "localhost/app",
    "[::1]:5000/app",
];

fuzz_target!(|data: &[u8]| {
    let Ok(credentials) = DockerCredentials::parse(data) else { return };
    for image in IMAGES.iter().filter_map(|i| ImageRef::parse(i).ok()) {
        let first = credentials.lookup(&image);
        assert_eq!(credentials.matching(&image).next().map(|(_, c)| c), first);
    }
});
