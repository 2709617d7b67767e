//! What a kubelet credential-provider plugin prints (a `CredentialProviderResponse`) never panics
//! the parser, nor the matching of its `auth` keys against the image asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullcheck::credentials::provider::response_credentials;

const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

fuzz_target!(|data: &[u8]| {
    for target in ["registry.example:5000/team/app", "123456789012.dkr.ecr.us-east-1.amazonaws.com/app"] {
        let _ = response_credentials(data, API_VERSION, target);
    }
});
