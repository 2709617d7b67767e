//! Credentials as the node tries them, against the real registries: every matching credential
//! in kubelet's order until one is accepted, the one that worked remembered.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pullcheck::config::RegistryConfig;
use pullcheck::credentials::{Credential, CredentialSource, SourcedCredential};
use pullcheck::image::ImageRef;
use pullcheck::registry::{ClientSettings, RegistryClient, State};
use support::{Env, PASSWORD, USER};

fn secret(name: &str, password: &str) -> SourcedCredential {
    SourcedCredential {
        source: CredentialSource::PullSecret(name.into()),
        credential: Credential::basic(USER, password),
    }
}

fn client(env: &Env) -> RegistryClient {
    let config = RegistryConfig::load(&env.registry_config("", "")).expect("valid test config");
    let settings = ClientSettings { request_timeout: Duration::from_secs(5), ..ClientSettings::default() };
    RegistryClient::new(Arc::new(config), settings)
}

#[tokio::test]
async fn a_rotated_out_secret_in_front_does_not_hide_the_current_one() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let (old, current) = (secret("old", "rotated-out"), secret("current", PASSWORD));
    for registry in [&env.basic.addr, &env.token.addr] {
        let image = ImageRef::parse(&format!("{registry}/private/app:v1")).expect("valid");
        for chain in [vec![old.clone(), current.clone()], vec![current.clone(), old.clone()]] {
            let client = client(&env);
            let first = client.probe_for(&image, &chain, &[], 1).await;
            assert_eq!(first.state, State::Available, "{registry} {first:?}");
            assert_eq!(first.credential, Some(CredentialSource::PullSecret("current".into())));
            // The one that worked goes first from now on: one request, the old secret not sent again.
            let steady = client.probe_for(&image, &chain, &[], 1).await;
            assert_eq!((steady.state, steady.http_requests), (State::Available, 1), "{registry} {steady:?}");
        }
    }
}

#[tokio::test]
async fn every_credential_refused_is_an_authentication_failure_naming_them() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let image = ImageRef::parse(&format!("{}/private/app:v1", env.basic.addr)).expect("valid");
    let chain = [secret("old", "wrong-1"), secret("older", "wrong-2")];
    let r = client(&env).probe_for(&image, &chain, &[], 1).await;
    assert_eq!(r.state, State::AuthenticationFailure, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.starts_with("every credential was refused"), "{error}");
    assert!(!error.contains("wrong-1") && !error.contains("wrong-2"), "no password in the error: {error}");
}

#[tokio::test]
async fn the_registry_configs_credential_follows_the_workloads() {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let registry = &env.basic.addr;
    let pw = env.dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).expect("write");
    let config = env.registry_config("", "");
    let text = std::fs::read_to_string(&config).expect("read").replace(
        &format!("  {registry}:\n    plainHttp: false\n"),
        &format!(
            "  {registry}:\n    plainHttp: false\n    auth: {{username: {USER}, passwordFile: {}}}\n",
            pw.display()
        ),
    );
    std::fs::write(&config, text).expect("write");
    let client = RegistryClient::new(
        Arc::new(RegistryConfig::load(&config).expect("valid")),
        ClientSettings { request_timeout: Duration::from_secs(5), ..ClientSettings::default() },
    );
    let image = ImageRef::parse(&format!("{registry}/private/app:v1")).expect("valid");
    let r = client.probe_for(&image, &[secret("stale", "nope")], &[], 1).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.credential, Some(CredentialSource::RegistryConfig), "the node's credential after the workload's");
}
