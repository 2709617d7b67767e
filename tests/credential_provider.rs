//! kubelet credential-provider plugins run for real: small `/bin/sh` plugins in a temporary bin
//! dir, each counting its calls in a file named by an env var from the config and keeping the
//! request it read on stdin.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use pullcheck::credentials::provider::{MAX_CONFIG_BYTES, ResponseProblem};
use pullcheck::credentials::{
    Credential, CredentialProviders, ProviderError, ServiceAccountData, ServiceAccountToken, ServiceAccountTokens,
    TokenProviders,
};
use pullcheck::image::ImageRef;
use serde_json::Value;

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";
const ECR: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const TIMEOUT: Duration = Duration::from_secs(1);

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin dir");
        Self { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A plugin that counts its call and keeps its request, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        let script = format!(
            "#!/bin/sh\necho call >> \"$PLUGIN_CALLS\"\ncat > \"$PLUGIN_REQUEST\"\necho \"$@\" > \"$PLUGIN_ARGS\"\n{body}\n"
        );
        let path = self.bin().join(name);
        std::fs::write(&path, script).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    }

    /// A plugin that answers `response` on stdout.
    fn answering(&self, name: &str, response: &str) {
        self.plugin(name, &format!("cat <<'EOF'\n{response}\nEOF"));
    }

    fn calls(&self, name: &str) -> usize {
        std::fs::read_to_string(self.file(&format!("{name}.calls"))).map_or(0, |s| s.lines().count())
    }

    fn request(&self, name: &str) -> Value {
        let text = std::fs::read_to_string(self.file(&format!("{name}.request"))).expect("plugin kept its request");
        serde_json::from_str(&text).expect("the request is JSON")
    }

    /// One provider's YAML, with the env its plugin counts and records with.
    fn provider(&self, name: &str, match_images: &[&str], default_cache: &str) -> String {
        let images: String = match_images.iter().map(|m| format!("      - \"{m}\"\n")).collect();
        let dir = self.dir.path().display();
        format!(
            "  - name: {name}\n    apiVersion: {V1}\n    matchImages:\n{images}    defaultCacheDuration: \"{default_cache}\"\n    \
             args: [get-credentials, --v=3]\n    env:\n      - {{name: PLUGIN_CALLS, value: \"{dir}/{name}.calls\"}}\n      \
             - {{name: PLUGIN_REQUEST, value: \"{dir}/{name}.request\"}}\n      - {{name: PLUGIN_ARGS, value: \"{dir}/{name}.args\"}}\n"
        )
    }

    fn config(&self, providers: &[String]) -> PathBuf {
        let path = self.file("config.yaml");
        let text = format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n{}",
            providers.concat()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn load(&self, providers: &[String]) -> CredentialProviders {
        CredentialProviders::load(&self.config(providers), &self.bin(), TIMEOUT).expect("config loads")
    }
}

fn response(cache_key_type: &str, cache_duration: Option<&str>, auth: &str) -> String {
    let duration = cache_duration.map(|d| format!(r#""cacheDuration":"{d}","#)).unwrap_or_default();
    format!(
        r#"{{"kind":"CredentialProviderResponse","apiVersion":"{V1}","cacheKeyType":"{cache_key_type}",{duration}"auth":{auth}}}"#
    )
}

fn ecr_auth() -> String {
    r#"{"*.dkr.ecr.*.amazonaws.com":{"username":"AWS","password":"ecr-token"}}"#.to_string()
}

/// The rest of pullcheck spawns its lookups: they must be `Send`.
fn assert_send<T: Send>(_: &T) {}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("valid image")
}

/// The one provider's outcome.
async fn only(providers: &CredentialProviders, img: &str) -> Result<Vec<Credential>, ProviderError> {
    let mut results = providers.credentials_for(&image(img)).await;
    assert_eq!(results.len(), 1, "one provider matches {img}");
    results.remove(0).1
}

#[tokio::test]
async fn a_plugin_gets_kubelets_request_and_gives_every_matching_credential_most_specific_first() {
    let setup = Setup::new();
    let auth = format!(
        r#"{{"*.dkr.ecr.*.amazonaws.com":{{"username":"AWS","password":"wide"}},
            "https://{ECR}/team":{{"username":"TEAM","password":"narrow"}},
            "quay.io":{{"username":"QUAY","password":"other"}}}}"#
    );
    setup.answering("ecr-credential-provider", &response("Image", None, &auth));
    let providers = setup.load(&[setup.provider("ecr-credential-provider", &["*.dkr.ecr.*.amazonaws.com"], "1h")]);
    let img = image(&format!("{ECR}/team/app:1.2"));
    assert!(providers.matches(&img));

    let lookup = providers.credentials_for(&img);
    assert_send(&lookup);
    let results = lookup.await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, "ecr-credential-provider");
    assert_eq!(results[0].1, Ok(vec![Credential::basic("TEAM", "narrow"), Credential::basic("AWS", "wide")]));

    // kubelet's request: the repository to pull, in the provider's API version. `cat` ran
    // without a PATH in the config: this process's environment reached the plugin.
    let request = setup.request("ecr-credential-provider");
    assert_eq!(request["kind"], "CredentialProviderRequest");
    assert_eq!(request["apiVersion"], V1);
    assert_eq!(request["image"], format!("{ECR}/team/app"));
    let args = std::fs::read_to_string(setup.file("ecr-credential-provider.args")).expect("args kept");
    assert_eq!(args.trim(), "get-credentials --v=3");
}

#[tokio::test]
async fn an_image_no_provider_matches_runs_nothing() {
    let setup = Setup::new();
    setup.answering("ecr-credential-provider", &response("Image", None, &ecr_auth()));
    let providers = setup.load(&[setup.provider("ecr-credential-provider", &["*.dkr.ecr.*.amazonaws.com"], "1h")]);
    for img in ["nginx", "quay.io/team/app", "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example/app"] {
        assert!(!providers.matches(&image(img)), "{img}");
        assert!(providers.credentials_for(&image(img)).await.is_empty(), "{img}");
    }
    assert_eq!(setup.calls("ecr-credential-provider"), 0);
}

#[tokio::test]
async fn cache_key_image_caches_per_image() {
    let setup = Setup::new();
    setup.answering("p", &response("Image", Some("1h"), &ecr_auth()));
    let providers = setup.load(&[setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "0s")]);
    for _ in 0..3 {
        assert_eq!(only(&providers, &format!("{ECR}/a:1")).await, Ok(vec![Credential::basic("AWS", "ecr-token")]));
    }
    assert_eq!(setup.calls("p"), 1);
    // Another tag of the same repository is the same image to kubelet; another repository is not.
    only(&providers, &format!("{ECR}/a:2")).await.expect("credentials");
    assert_eq!(setup.calls("p"), 1);
    only(&providers, &format!("{ECR}/b:1")).await.expect("credentials");
    assert_eq!(setup.calls("p"), 2);
}

#[tokio::test]
async fn cache_key_registry_caches_per_registry() {
    let setup = Setup::new();
    setup.answering("p", &response("Registry", Some("1h"), &ecr_auth()));
    let providers = setup.load(&[setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "0s")]);
    only(&providers, &format!("{ECR}/a")).await.expect("credentials");
    only(&providers, &format!("{ECR}/b/c")).await.expect("credentials");
    assert_eq!(setup.calls("p"), 1);
    only(&providers, "210987654321.dkr.ecr.eu-west-1.amazonaws.com/a").await.expect("credentials");
    assert_eq!(setup.calls("p"), 2);
}

#[tokio::test]
async fn cache_key_global_caches_once() {
    let setup = Setup::new();
    setup.answering("p", &response("Global", Some("1h"), &ecr_auth()));
    let providers = setup.load(&[setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "0s")]);
    only(&providers, &format!("{ECR}/a")).await.expect("credentials");
    only(&providers, "210987654321.dkr.ecr.eu-west-1.amazonaws.com/b").await.expect("credentials");
    assert_eq!(setup.calls("p"), 1);
}

#[tokio::test]
async fn a_cache_duration_expires() {
    let setup = Setup::new();
    setup.answering("p", &response("Image", Some("1s"), &ecr_auth()));
    let providers = setup.load(&[setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "1h")]);
    let img = format!("{ECR}/a");
    let start = Instant::now();
    only(&providers, &img).await.expect("credentials");
    only(&providers, &img).await.expect("credentials");
    assert_eq!(setup.calls("p"), 1, "cached within its second");
    // Poll until the plugin is asked again: the entry expired, not before its second was up.
    while setup.calls("p") < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "the cached entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
        only(&providers, &img).await.expect("credentials");
    }
    assert!(start.elapsed() >= Duration::from_secs(1), "re-asked after {:?}", start.elapsed());
}

#[tokio::test]
async fn a_zero_cache_duration_is_not_cached() {
    let setup = Setup::new();
    setup.answering("p", &response("Global", Some("0s"), &ecr_auth()));
    let providers = setup.load(&[setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "1h")]);
    for _ in 0..3 {
        only(&providers, &format!("{ECR}/a")).await.expect("credentials");
    }
    assert_eq!(setup.calls("p"), 3);
}

#[tokio::test]
async fn the_default_cache_duration_serves_responses_without_one() {
    let setup = Setup::new();
    setup.answering("cached", &response("Image", None, &ecr_auth()));
    setup.answering(
        "uncached",
        &response("Image", None, r#"{"*.pkg.dev":{"username":"oauth2accesstoken","password":"t"}}"#),
    );
    let providers = setup.load(&[
        setup.provider("cached", &["*.dkr.ecr.*.amazonaws.com"], "1h"),
        setup.provider("uncached", &["*.pkg.dev"], "0s"),
    ]);
    for _ in 0..3 {
        only(&providers, &format!("{ECR}/a")).await.expect("credentials");
        only(&providers, "europe-docker.pkg.dev/p/r/app").await.expect("credentials");
    }
    assert_eq!(setup.calls("cached"), 1);
    assert_eq!(setup.calls("uncached"), 3);
}

#[tokio::test]
async fn concurrent_requests_run_the_plugin_once() {
    let setup = Setup::new();
    let auth = r#"{"*.dkr.ecr.*.amazonaws.com":{"username":"AWS","password":"ecr-token"},
                   "*.dkr.ecr.*.amazonaws.com.cn":{"username":"AWS","password":"ecr-token"}}"#;
    let slow = |duration: &str| format!("sleep 0.3\ncat <<'EOF'\n{}\nEOF", response("Image", Some(duration), auth));
    setup.plugin("cached", &slow("1h"));
    setup.plugin("uncached", &slow("0s"));
    let providers = setup.load(&[
        setup.provider("cached", &["*.dkr.ecr.*.amazonaws.com"], "1h"),
        setup.provider("uncached", &["*.dkr.ecr.*.amazonaws.com.cn"], "0s"),
    ]);
    for (name, img) in [("cached", format!("{ECR}/a")), ("uncached", "1.dkr.ecr.cn-north-1.amazonaws.com.cn/a".into())]
    {
        let img = image(&img);
        let results = futures_util::future::join_all((0..20).map(|_| providers.credentials_for(&img))).await;
        for result in results {
            assert_eq!(result, vec![(name.to_string(), Ok(vec![Credential::basic("AWS", "ecr-token")]))]);
        }
        // Callers that waited while the plugin ran share its answer, cached or not, as kubelet's
        // singleflight does.
        assert_eq!(setup.calls(name), 1, "{name}");
    }
}

#[tokio::test]
async fn a_slow_plugin_is_killed_at_the_timeout_and_not_cached() {
    let setup = Setup::new();
    setup.plugin("p", "exec sleep 30");
    let providers = setup.load(&[setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "1h")]);
    for expected_calls in 1..=2 {
        let start = Instant::now();
        let result = only(&providers, &format!("{ECR}/a")).await;
        assert_eq!(result, Err(ProviderError::Timeout { provider: "p".into(), timeout: TIMEOUT }));
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        assert_eq!(setup.calls("p"), expected_calls, "a failure is not cached");
    }
}

#[tokio::test]
async fn a_failing_plugin_is_an_error_that_never_shows_its_output() {
    let setup = Setup::new();
    setup.plugin("exits", "echo 'password: hunter2-stderr' >&2\necho '{\"password\":\"hunter2-stdout\"}'\nexit 3");
    setup.plugin("garbage", "echo 'not json: hunter2-garbage'");
    setup.plugin("killed", "kill -9 $$");
    setup.plugin("chatty", "head -c 2000000 /dev/zero");
    setup.answering(
        "wrong-version",
        &response("Image", None, &ecr_auth()).replace(V1, "credentialprovider.kubelet.k8s.io/v1beta1"),
    );
    setup.answering(
        "wrong-kind",
        &response("Image", None, &ecr_auth()).replace("CredentialProviderResponse", "hunter2"),
    );
    setup.answering("no-username", &response("Image", None, r#"{"*.*.*":{"password":"hunter2-password"}}"#));
    let names = ["exits", "garbage", "killed", "chatty", "wrong-version", "wrong-kind", "no-username"];
    let providers = setup.load(&names.map(|n| setup.provider(n, &["*.*.*"], "1h")));
    let results = providers.credentials_for(&image("registry.example.com/app")).await;
    let problem = |name: &str, problem| ProviderError::InvalidResponse { provider: name.into(), problem };
    let expected = [
        ProviderError::Exit { provider: "exits".into(), status: "exited with status 3".into() },
        problem("garbage", ResponseProblem::NotJson { line: 1, column: 2 }),
        ProviderError::Exit { provider: "killed".into(), status: "killed by signal 9".into() },
        ProviderError::OutputTooLarge { provider: "chatty".into(), limit: 1024 * 1024 },
        problem("wrong-version", ResponseProblem::WrongApiVersion { expected: V1.into() }),
        problem("wrong-kind", ResponseProblem::WrongKind),
        problem("no-username", ResponseProblem::MissingUsername),
    ];
    assert_eq!(results.len(), expected.len());
    for ((name, result), (want_name, want)) in results.iter().zip(names.iter().zip(expected)) {
        assert_eq!(name, want_name, "config order");
        assert_eq!(result, &Err(want));
        let shown = format!("{} {:?}", result.as_ref().map(|_| ()).unwrap_err(), result);
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    for name in names {
        assert_eq!(setup.calls(name), 1, "{name} ran once");
    }
}

#[tokio::test]
async fn every_matching_provider_answers_in_config_order() {
    let setup = Setup::new();
    setup.plugin("first", "exit 1");
    setup.answering("second", &response("Image", None, r#"{"registry.example.com":{"username":"u","password":"p"}}"#));
    setup.answering("elsewhere", &response("Image", None, &ecr_auth()));
    let providers = setup.load(&[
        setup.provider("first", &["registry.example.com"], "1h"),
        setup.provider("elsewhere", &["*.dkr.ecr.*.amazonaws.com"], "1h"),
        setup.provider("second", &["*.example.com/app"], "1h"),
    ]);
    let results = providers.credentials_for(&image("registry.example.com/app/web")).await;
    let names: Vec<_> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert!(results[0].1.is_err());
    assert_eq!(results[1].1, Ok(vec![Credential::basic("u", "p")]));
    assert_eq!(setup.calls("elsewhere"), 0);
}

#[tokio::test]
async fn a_service_account_token_provider_is_never_run() {
    let setup = Setup::new();
    setup.answering("p", &response("Image", None, &ecr_auth()));
    let provider = setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "1h")
        + "    tokenAttributes: {serviceAccountTokenAudience: sts.amazonaws.com, requireServiceAccount: true, cacheType: Token}\n";
    let providers = setup.load(&[provider]);
    let img = image(&format!("{ECR}/a"));
    assert!(!providers.matches(&img), "no node credentials from a per-pod provider");
    assert_eq!(
        providers.credentials_for(&img).await,
        vec![("p".to_string(), Err(ProviderError::ServiceAccountTokenMode { provider: "p".into() }))]
    );
    assert_eq!(setup.calls("p"), 0);
}

fn load_error(setup: &Setup, providers: &[String]) -> String {
    match CredentialProviders::load(&setup.config(providers), &setup.bin(), TIMEOUT) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn configs_kubelet_refuses_are_refused_naming_file_and_field() {
    let setup = Setup::new();
    setup.answering("p", "{}");
    setup.answering("q", "{}");
    let config = setup.file("config.yaml").display().to_string();
    let good = setup.provider("p", &["*.example.com"], "1h");

    let unknown_version = good.replace(V1, "credentialprovider.kubelet.k8s.io/v2");
    let e = load_error(&setup, &[unknown_version]);
    assert!(e.starts_with(&config) && e.contains("providers[0].apiVersion"), "{e}");

    let e = load_error(&setup, &[good.clone(), setup.provider("missing", &["*.example.com"], "1h")]);
    assert!(e.contains("providers[1].name") && e.contains(&setup.bin().join("missing").display().to_string()), "{e}");

    let e = load_error(&setup, &[good.replace("\"1h\"", "\"1 hour\"")]);
    assert!(e.contains("providers[0].defaultCacheDuration") && e.contains("1 hour"), "{e}");

    let e = load_error(&setup, &[good.clone(), good.clone()]);
    assert!(e.contains("providers[1].name") && e.contains("duplicate"), "{e}");

    let e = load_error(&setup, &[setup.provider("p", &[], "1h").replace("    matchImages:\n", "")]);
    assert!(e.contains("providers[0].matchImages"), "{e}");

    std::fs::write(setup.bin().join("not-executable"), "#!/bin/sh\n").expect("write");
    let e = load_error(&setup, &[setup.provider("not-executable", &["*.example.com"], "1h")]);
    assert!(e.contains("not executable"), "{e}");

    std::fs::create_dir(setup.bin().join("a-directory")).expect("mkdir");
    let e = load_error(&setup, &[setup.provider("a-directory", &["*.example.com"], "1h")]);
    assert!(e.contains("is not a file"), "{e}");

    let e = CredentialProviders::load(&setup.config(std::slice::from_ref(&good)), &setup.file("no-such-bin"), TIMEOUT)
        .expect_err("missing bin dir");
    assert!(e.to_string().contains("no-such-bin"), "{e}");

    let e = CredentialProviders::load(&setup.file("no-such-config.yaml"), &setup.bin(), TIMEOUT).expect_err("no file");
    assert!(e.to_string().contains("no-such-config.yaml"), "{e}");

    let huge = setup.file("huge.yaml");
    std::fs::write(&huge, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).expect("write");
    let e = CredentialProviders::load(&huge, &setup.bin(), TIMEOUT).expect_err("too large");
    assert!(e.to_string().contains("larger than"), "{e}");

    // The config env may hold secrets: an error elsewhere in the file never echoes them.
    let secret_env = good.replace("PLUGIN_ARGS, value: \"", "PLUGIN_ARGS, value: \"hunter2-");
    let e = load_error(&setup, &[secret_env, setup.provider("missing", &["*.example.com"], "1h")]);
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn a_config_directory_is_merged_in_name_order_and_refuses_duplicates() {
    let setup = Setup::new();
    setup.answering("p", "{}");
    setup.answering("q", "{}");
    let dir = setup.file("config.d");
    std::fs::create_dir(&dir).expect("mkdir");
    let write = |file: &str, providers: &[String]| {
        let text = format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n{}",
            providers.concat()
        );
        std::fs::write(dir.join(file), text).expect("write");
    };
    write("20-q.yaml", &[setup.provider("q", &["*.example.com"], "1h")]);
    write("10-p.yml", &[setup.provider("p", &["*.example.com"], "1h")]);
    std::fs::write(dir.join("README.md"), "not a config").expect("write");
    let providers = CredentialProviders::load(&dir, &setup.bin(), TIMEOUT).expect("merged");
    assert_eq!(providers.names().collect::<Vec<_>>(), ["p", "q"]);

    write("30-p-again.json", &[setup.provider("p", &["*.example.org"], "1h")]);
    let e = CredentialProviders::load(&dir, &setup.bin(), TIMEOUT).expect_err("duplicate across files");
    assert!(e.to_string().contains("30-p-again.json") && e.to_string().contains("duplicate"), "{e}");
}

/// The configs the deploy overlays ship are the clouds' node configs, and load.
#[test]
fn the_overlays_node_configs_load() {
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays");
    let cases = [
        ("eks/credential-provider-config.json", "ecr-credential-provider", format!("{ECR}/team/app:1")),
        (
            "eks/credential-provider-config.json",
            "ecr-credential-provider",
            "1.dkr.ecr-fips.us-gov-west-1.amazonaws.com/a".into(),
        ),
        ("gke/credential-provider-config.yaml", "auth-provider-gcp", "europe-west1-docker.pkg.dev/p/r/app".into()),
        ("gke/credential-provider-config.yaml", "auth-provider-gcp", "gcr.io/p/app".into()),
        ("aks/credential-provider-config.yaml", "acr-credential-provider", "myacr.azurecr.io/team/app".into()),
    ];
    for (config, binary, img) in cases {
        let setup = Setup::new();
        setup.answering(binary, "{}");
        let providers = CredentialProviders::load(&overlays.join(config), &setup.bin(), TIMEOUT).expect(config);
        assert_eq!(providers.names().collect::<Vec<_>>(), [binary]);
        assert!(providers.matches(&image(&img)), "{config}: {img}");
        assert!(!providers.matches(&image("public.ecr.aws/team/app")), "{config}");
        assert!(!providers.matches(&image("nginx")), "{config}");
    }
}

/// The API server as the providers see it in service-account-token mode: one service account
/// per name with its uid and annotations, and tokens naming the account and audience, counted.
struct FakeAccounts {
    accounts: std::collections::HashMap<String, ServiceAccountData>,
    token_life: Duration,
    tokens: std::sync::Mutex<Vec<String>>,
}

/// A service account's name, uid and annotations.
type FakeAccount<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

impl FakeAccounts {
    fn new(token_life: Duration, accounts: &[FakeAccount]) -> Self {
        let accounts = accounts
            .iter()
            .map(|(name, uid, annotations)| {
                let annotations = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                (name.to_string(), ServiceAccountData { uid: uid.to_string(), annotations })
            })
            .collect();
        Self { accounts, token_life, tokens: std::sync::Mutex::default() }
    }

    fn issued(&self) -> usize {
        self.tokens.lock().expect("lock").len()
    }
}

impl ServiceAccountTokens for FakeAccounts {
    fn account<'a>(&'a self, _namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<ServiceAccountData, String>> {
        let found = self.accounts.get(name).cloned().ok_or_else(|| "not found".to_string());
        Box::pin(async move { found })
    }

    fn token<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<ServiceAccountToken, String>> {
        let token = format!("token-{audience}-{namespace}-{name}-{}", self.issued());
        self.tokens.lock().expect("lock").push(token.clone());
        let life = self.token_life;
        Box::pin(async move { Ok(ServiceAccountToken::new(token, life)) })
    }
}

fn token_provider(setup: &Setup) -> String {
    setup.provider("p", &["*.dkr.ecr.*.amazonaws.com"], "1h")
        + "    tokenAttributes:\n      serviceAccountTokenAudience: sts.amazonaws.com\n      requireServiceAccount: true\n      cacheType: ServiceAccount\n      \
           requiredServiceAccountAnnotationKeys: [role]\n      optionalServiceAccountAnnotationKeys: [host, absent]\n"
}

#[tokio::test]
async fn service_account_token_mode_passes_the_token_and_listed_annotations_and_caches_per_account() {
    let setup = Setup::new();
    setup.answering("p", &response("Registry", Some("1h"), &ecr_auth()));
    let providers = setup.load(&[token_provider(&setup)]).with_token_providers(TokenProviders::PerWorkload);
    let accounts = FakeAccounts::new(
        Duration::from_secs(600),
        &[
            ("builder", "uid-1", &[("role", "arn:builder"), ("host", "h"), ("unlisted", "x")]),
            ("other", "uid-2", &[("role", "arn:other")]),
            ("plain", "uid-3", &[("host", "h")]),
        ],
    );
    let img = image(&format!("{ECR}/a"));
    assert!(providers.credentials_for(&img).await.is_empty(), "not a node credential when run per workload");
    let ecr = Ok(vec![Credential::basic("AWS", "ecr-token")]);
    let run = |name: &'static str| {
        let (providers, accounts, img) = (&providers, &accounts, &img);
        async move { providers.workload_credentials_for(img, "team", name, accounts).await }
    };
    assert_eq!(run("builder").await, vec![("p".to_string(), ecr.clone())]);
    let request = setup.request("p");
    assert_eq!(request["serviceAccountToken"], "token-sts.amazonaws.com-team-builder-0");
    assert_eq!(request["serviceAccountAnnotations"], serde_json::json!({"role": "arn:builder", "host": "h"}));
    // Cached for that account: no exec, no token.
    assert_eq!(run("builder").await, vec![("p".to_string(), ecr.clone())]);
    assert_eq!((setup.calls("p"), accounts.issued()), (1, 1));
    // Another account is another cache entry.
    assert_eq!(run("other").await, vec![("p".to_string(), ecr.clone())]);
    assert_eq!((setup.calls("p"), accounts.issued()), (2, 2));
    // A missing required annotation: nothing, no token asked for, the key named.
    let missing = run("plain").await;
    assert_eq!(
        missing,
        vec![(
            "p".to_string(),
            Err(ProviderError::RequiredAnnotation {
                provider: "p".into(),
                namespace: "team".into(),
                service_account: "plain".into(),
                key: "role".into(),
            })
        )]
    );
    assert!(missing[0].1.as_ref().map_err(ToString::to_string).unwrap_err().contains("has no annotation role"));
    assert_eq!((setup.calls("p"), accounts.issued()), (2, 2));
    // An account that does not exist: an error, no exec.
    assert!(matches!(&run("gone").await[0].1, Err(ProviderError::ServiceAccount { .. })));
    assert_eq!(setup.calls("p"), 2);
}

#[tokio::test]
async fn service_account_token_mode_caches_no_longer_than_the_token_lives() {
    let setup = Setup::new();
    setup.answering("p", &response("Registry", Some("1h"), &ecr_auth()));
    let providers = setup.load(&[token_provider(&setup)]).with_token_providers(TokenProviders::PerWorkload);
    let accounts = FakeAccounts::new(Duration::ZERO, &[("builder", "uid-1", &[("role", "r")])]);
    let img = image(&format!("{ECR}/a"));
    for _ in 0..2 {
        providers.workload_credentials_for(&img, "team", "builder", &accounts).await[0].1.clone().expect("credentials");
    }
    assert_eq!((setup.calls("p"), accounts.issued()), (2, 2), "a spent token's credentials are not cached");
}

#[tokio::test]
async fn service_account_token_mode_is_refused_or_needs_a_cluster() {
    let setup = Setup::new();
    setup.answering("p", &response("Registry", Some("1h"), &ecr_auth()));
    let img = image(&format!("{ECR}/a"));
    let accounts = FakeAccounts::new(Duration::from_secs(600), &[("builder", "uid-1", &[("role", "r")])]);
    let refused = setup.load(&[token_provider(&setup)]);
    assert!(refused.workload_credentials_for(&img, "team", "builder", &accounts).await.is_empty());
    let no_cluster = setup.load(&[token_provider(&setup)]).with_token_providers(TokenProviders::NoCluster);
    assert_eq!(
        no_cluster.credentials_for(&img).await,
        vec![("p".to_string(), Err(ProviderError::NoServiceAccount { provider: "p".into() }))]
    );
    assert_eq!((setup.calls("p"), accounts.issued()), (0, 0));
}
