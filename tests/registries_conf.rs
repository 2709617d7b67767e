//! Probes that go where a CRI-O node's pulls go: containers-registries.conf(5) prefixes
//! rewritten to their locations, mirrors in order with `pull-from-mirror`, `insecure` plain-HTTP
//! registries, `blocked` prefixes, drop-ins, and certs.d CAs for TLS registries
//! (`--registries-conf`, `--containers-certs-dir`). Real docker-registry processes behind every
//! endpoint, the fault proxy as a mirror, and the binary run as a user runs it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use pullcheck::config::RegistryConfig;
use pullcheck::config::registries_conf::RegistriesConf;
use pullcheck::credentials::{Credential, CredentialSource, SourcedCredential};
use pullcheck::image::ImageRef;
use pullcheck::registry::{ClientSettings, ProbeResult, RegistryClient, State};
use serde_json::Value;
use support::proxy::FaultProxy;
use support::registry::{Registry, Served};
use support::{Env, PASSWORD, USER};

/// `DIR/registries.conf` holding `text`, and `DIR/certs.d/<basic>/ca.crt` trusting the test CA.
struct Node {
    conf: PathBuf,
    certs: PathBuf,
}

impl Node {
    fn new(env: &Env, text: &str) -> Node {
        let dir = env.dir.path().join(format!("node-{}", support::rand_suffix()));
        let certs = dir.join("certs.d");
        std::fs::create_dir_all(certs.join(&env.basic.addr)).expect("mkdir certs.d");
        std::fs::copy(&env.pki.ca_cert, certs.join(&env.basic.addr).join("ca.crt")).expect("copy CA");
        let conf = dir.join("registries.conf");
        std::fs::write(&conf, text).expect("write registries.conf");
        Node { conf, certs }
    }

    fn drop_in(&self, name: &str, text: &str) {
        let dir = self.conf.parent().expect("parent").join("registries.conf.d");
        std::fs::create_dir_all(&dir).expect("mkdir drop-ins");
        std::fs::write(dir.join(name), text).expect("write drop-in");
    }

    fn client(&self, with_certs: bool) -> RegistryClient {
        let certs: Vec<PathBuf> = with_certs.then(|| self.certs.clone()).into_iter().collect();
        let conf = RegistriesConf::load(&self.conf, &certs).expect("valid registries.conf");
        let settings =
            ClientSettings { request_timeout: Duration::from_secs(2), retries: 0, ..ClientSettings::default() };
        RegistryClient::new(Arc::new(RegistryConfig::default().with_registries_conf(conf)), settings)
    }
}

fn alice() -> [SourcedCredential; 1] {
    [SourcedCredential {
        source: CredentialSource::PullSecret("regcred".into()),
        credential: Credential::basic(USER, PASSWORD),
    }]
}

async fn probe(client: &RegistryClient, reference: &str, chain: &[SourcedCredential]) -> ProbeResult {
    let image = ImageRef::parse(reference).expect("valid test image");
    client.probe_for(&image, chain, &[], 1).await
}

async fn served_since(registry: &Registry, mark: usize, at_least: usize) -> Vec<String> {
    registry.served_since(mark, at_least).await.iter().map(Served::line).collect()
}

fn seen_targets(proxy: &FaultProxy) -> Vec<String> {
    proxy.seen().iter().map(|s| format!("{} {}", s.method, s.target)).collect()
}

#[tokio::test]
async fn mirrors_first_with_rewritten_repositories_then_the_location_trusted_through_certs_d() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let mirror = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let basic = &env.basic.addr;
    // `crio.test/apps/*` is `<basic>/team/*`: another host and another namespace. The mirror
    // keeps images under `team/` too; a second entry points it at a namespace it lacks.
    let text = format!(
        "[[registry]]\nprefix = \"crio.test/apps\"\nlocation = \"{basic}/team\"\n\
         [[registry.mirror]]\nlocation = \"{m}/team\"\ninsecure = true\n\
         [[registry]]\nprefix = \"crio.test/missing\"\nlocation = \"{basic}/team\"\n\
         [[registry.mirror]]\nlocation = \"{m}/nowhere\"\ninsecure = true\n",
        m = mirror.addr()
    );
    let node = Node::new(&env, &text);
    let client = node.client(true);

    // The mirror serves it: the location is never asked.
    let mark = env.basic.served().len();
    let r = probe(&client, "crio.test/apps/app:v1", &alice()).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!((r.registry.as_str(), r.digest.as_deref()), (mirror.addr().as_str(), Some(digest.as_str())));
    let asked: Vec<String> = seen_targets(&mirror).into_iter().filter(|t| t.starts_with("HEAD ")).collect();
    assert_eq!(asked, ["HEAD /v2/team/app/manifests/v1"], "the rewritten repository, no ?ns=");
    assert_eq!(env.basic.served().len(), mark, "the location was not asked while the mirror served");
    assert!(mirror.seen().iter().all(|s| !s.authorization), "the workload's credential never goes to a mirror");

    // The mirror lacks it: the location, over TLS trusted through certs.d, with the workload's
    // credential and the repository rewritten.
    let r = probe(&client, "crio.test/missing/app:v1", &alice()).await;
    assert_eq!(r.state, State::Available, "{r:?}");
    assert_eq!(r.registry, *basic, "{r:?}");
    assert_eq!(r.credential, Some(CredentialSource::PullSecret("regcred".into())), "{r:?}");
    assert!(
        seen_targets(&mirror).iter().any(|t| t == "HEAD /v2/nowhere/app/manifests/v1"),
        "{:?}",
        seen_targets(&mirror)
    );
    let manifest = "HEAD /v2/team/app/manifests/v1";
    assert_eq!(served_since(&env.basic, mark, 2).await, [format!("{manifest} 401"), format!("{manifest} 200")]);

    // Without certs.d the location's certificate is not trusted: unavailable, never downgraded.
    let r = probe(&node.client(false), "crio.test/missing/app:v1", &alice()).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.contains(basic.as_str()) && error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn digest_only_mirrors_are_skipped_for_tags_and_drop_ins_override_by_prefix() {
    let env = Env::start().await;
    let (digest, _) = env.pusher.image("team/app", "v1", "amd64").await;
    let mirror = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let basic = &env.basic.addr;
    // The main file's mirror serves tags too; the drop-in replaces its table with digest-only.
    let node = Node::new(
        &env,
        &format!(
            "[[registry]]\nlocation = \"{basic}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            mirror.addr()
        ),
    );
    node.drop_in(
        "50-mirror.conf",
        &format!(
            "[[registry]]\nprefix = \"{basic}\"\nlocation = \"{basic}\"\n\
             [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\npull-from-mirror = \"digest-only\"\n",
            mirror.addr()
        ),
    );
    node.drop_in("ignored.txt", "not TOML, not a .conf");
    let client = node.client(true);

    let mark = env.basic.served().len();
    let r = probe(&client, &format!("{basic}/team/app:v1"), &alice()).await;
    assert_eq!((r.state, r.registry.as_str()), (State::Available, basic.as_str()), "{r:?}");
    assert!(mirror.seen().is_empty(), "a tag skips a digest-only mirror: {:?}", seen_targets(&mirror));
    assert_eq!(served_since(&env.basic, mark, 2).await.len(), 2);

    let r = probe(&client, &format!("{basic}/team/app@{digest}"), &alice()).await;
    assert_eq!((r.state, r.registry.as_str()), (State::Available, mirror.addr().as_str()), "{r:?}");
    assert!(
        seen_targets(&mirror).contains(&format!("HEAD /v2/team/app/manifests/{digest}")),
        "{:?}",
        seen_targets(&mirror)
    );
}

#[tokio::test]
async fn insecure_registries_over_plain_http_and_blocked_prefixes_send_nothing() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let plain = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let strict = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let text = format!(
        "[[registry]]\nlocation = \"{p}\"\ninsecure = true\n\
         [[registry]]\nlocation = \"{s}\"\n\
         [[registry]]\nprefix = \"{p}/secret\"\nlocation = \"{p}/secret\"\nblocked = true\n\
         [[registry]]\nprefix = \"*.blocked.test\"\nblocked = true\n",
        p = plain.addr(),
        s = strict.addr()
    );
    let client = Node::new(&env, &text).client(true);

    let r = probe(&client, &format!("{}/team/app:v1", plain.addr()), &[]).await;
    assert_eq!(r.state, State::Available, "insecure: plain HTTP after the TLS attempt: {r:?}");
    assert!(seen_targets(&plain).contains(&"HEAD /v2/team/app/manifests/v1".to_string()), "{:?}", seen_targets(&plain));

    // The same kind of registry without `insecure`: CRI-O has no loopback exception.
    let r = probe(&client, &format!("{}/team/app:v1", strict.addr()), &[]).await;
    assert_eq!(r.state, State::RegistryUnavailable, "{r:?}");
    assert!(!seen_targets(&strict).iter().any(|t| t.starts_with("HEAD /v2/")), "{:?}", seen_targets(&strict));

    let before = plain.seen().len();
    for (reference, prefix) in [
        (format!("{}/secret/app:v1", plain.addr()), format!("{}/secret", plain.addr())),
        ("registry.blocked.test/team/app:v1".to_string(), "*.blocked.test".to_string()),
    ] {
        let r = probe(&client, &reference, &[]).await;
        assert_eq!(r.state, State::UnknownError, "{r:?}");
        assert_eq!(r.error.as_deref(), Some(format!("blocked by registries.conf (prefix {prefix})").as_str()));
        assert_eq!(r.http_requests, 0, "{r:?}");
    }
    assert_eq!(plain.seen().len(), before, "a blocked image sends no request: {:?}", seen_targets(&plain));
}

async fn check(args: &[&str]) -> Output {
    let (mut command, _home) = support::process::pullcheck_async();
    command.arg("check").args(args).args(["-o", "json"]).output().await.expect("run pullcheck")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn pods_manifest(dir: &Path, images: &[&str]) -> PathBuf {
    let pods: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            format!("kind: Pod\nmetadata: {{name: p{i}}}\nspec: {{containers: [{{name: c, image: \"{image}\"}}]}}\n")
        })
        .collect();
    let path = dir.join(format!("pods-{}.yaml", support::rand_suffix()));
    std::fs::write(&path, pods.join("\n---\n")).expect("write manifest");
    path
}

#[tokio::test]
async fn the_binary_reads_registries_conf_and_certs_d_and_refuses_hosts_dir_with_it() {
    let env = Env::start().await;
    env.pusher.image("team/app", "v1", "amd64").await;
    let mirror = FaultProxy::start(format!("http://{}", env.anon.addr)).await;
    let basic = &env.basic.addr;
    let text = format!(
        "[[registry]]\nprefix = \"crio.test\"\nlocation = \"{basic}\"\n\
         [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\npull-from-mirror = \"digest-only\"\n\
         [[registry]]\nprefix = \"crio.test/blocked\"\nlocation = \"{basic}/blocked\"\nblocked = true\n",
        mirror.addr()
    );
    let node = Node::new(&env, &text);
    let manifest = pods_manifest(env.dir.path(), &["crio.test/team/app:v1", "crio.test/blocked/app:v1"]);
    // The registry wants alice's credential: give it through a registry config (credentials
    // still apply with --registries-conf).
    let config = env.dir.path().join("creds.yaml");
    std::fs::write(&config, format!("registries:\n  {basic}:\n    auth: {{username: {USER}, password: {PASSWORD}}}\n"))
        .expect("write registry config");
    let (conf, certs) = (node.conf.display().to_string(), node.certs.display().to_string());
    let file = manifest.display().to_string();
    let out = check(&[
        "-f",
        &file,
        "--registry-config",
        &config.display().to_string(),
        "--registries-conf",
        &conf,
        "--containers-certs-dir",
        &certs,
    ])
    .await;
    let report = json(&out);
    let images = report["images"].as_array().cloned().unwrap_or_default();
    let find = |image: &str| images.iter().find(|i| i["image"] == image).cloned().unwrap_or(Value::Null);
    let served = find("crio.test/team/app:v1");
    assert_eq!(
        (served["state"].as_str(), served["registry"].as_str()),
        (Some("available"), Some(basic.as_str())),
        "{report}"
    );
    let blocked = find("crio.test/blocked/app:v1");
    assert_eq!(blocked["state"], "unknown_error", "{report}");
    let error = blocked["error"].as_str().unwrap_or_default();
    assert!(error.contains("blocked by registries.conf (prefix crio.test/blocked)"), "{report}");
    assert!(mirror.seen().is_empty(), "a tag skips the digest-only mirror: {:?}", seen_targets(&mirror));

    let hosts = env.dir.path().join("hosts.d");
    std::fs::create_dir_all(&hosts).expect("mkdir");
    let out = check(&["-f", &file, "--registries-conf", &conf, "--hosts-dir", &hosts.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--registries-conf") && stderr.contains("--hosts-dir"), "{stderr}");

    std::fs::write(&node.conf, "[[registry]]\nlocation = \"https://x.example\"\n").expect("rewrite");
    let out = check(&["-f", &file, "--registries-conf", &conf]).await;
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{conf}: registry[0].location: ")), "{stderr}");
}
