//! Credential providers in service-account-token mode (KEP-4412) end to end: the API-server
//! harness issues the tokens (TokenRequest, under RBAC), a `/bin/sh` plugin accepts only a token
//! of the workload's service account for its audience with the annotations kubelet would pass,
//! and answers with the htpasswd registry's credentials; the real binary, `check -A` and `run`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::otlp::Receiver;
use support::process::{json_report, run_pullcheck};
use support::{Env, eventually, workload};

const AUDIENCE: &str = "registry.example";
const ROBOT_KEY: &str = "example.com/robot";
const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    env: Env,
    api: ApiServer,
    private: String,
    kubeconfig: String,
    registry_config: String,
    provider_config: String,
    bin: String,
}

/// The plugin: refuses (exit 1) a request without a token of `team-a/puller` for `AUDIENCE`, or
/// with other annotations than the required one (kubelet passes only the listed keys), and
/// otherwise answers with the registry's credentials.
fn plugin(registry: &str) -> String {
    let token = format!("\"serviceAccountToken\":\"eyJhbGciOiJSUzI1NiJ9.harness.{AUDIENCE}.team-a.puller.");
    let annotations = format!("\"serviceAccountAnnotations\":{{\"{ROBOT_KEY}\":\"alice\"}}");
    let user = support::USER;
    let password = support::PASSWORD;
    format!(
        "#!/bin/sh\nrequest=$(cat)\ncase \"$request\" in\n  *'{token}'*) ;;\n  *) exit 1 ;;\nesac\n\
         case \"$request\" in\n  *'{annotations}}}'*) ;;\n  *) exit 1 ;;\nesac\n\
         cat <<'EOF'\n{{\"kind\":\"CredentialProviderResponse\",\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\
         \"cacheKeyType\":\"Registry\",\"cacheDuration\":\"1h\",\"auth\":{{\"{registry}\":{{\"username\":\"{user}\",\"password\":\"{password}\"}}}}}}\nEOF\n"
    )
}

async fn cluster() -> Cluster {
    let env = Env::start().await;
    env.pusher.image("private/app", "v1", "amd64").await;
    let api = ApiServer::start().await;
    let registry = env.basic.addr.clone();
    let private = format!("{registry}/private/app:v1");
    // team-a: its service account carries the required annotation (and one the plugin must not see).
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "team-a"}}));
    api.apply(json!({"kind": "ServiceAccount", "metadata": {"name": "puller", "namespace": "team-a",
        "annotations": {ROBOT_KEY: "alice", "example.com/unlisted": "x"}}}));
    let mut web = workload("Deployment", "team-a", "web", &private);
    web["spec"]["template"]["spec"]["serviceAccountName"] = json!("puller");
    api.apply(web);
    // team-b: its service account lacks it, so the provider gives it nothing.
    api.apply(json!({"kind": "Namespace", "metadata": {"name": "team-b"}}));
    api.apply(json!({"kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "team-b"}}));
    api.apply(workload("Deployment", "team-b", "web", &private));

    let dir = env.dir.path();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let script = bin.join("sa-provider");
    std::fs::write(&script, plugin(&registry)).expect("write plugin");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    let provider_config = dir.join("providers.yaml");
    std::fs::write(
        &provider_config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: sa-provider\n    \
             apiVersion: credentialprovider.kubelet.k8s.io/v1\n    matchImages: [\"{registry}\"]\n    defaultCacheDuration: 1h\n    \
             tokenAttributes:\n      serviceAccountTokenAudience: {AUDIENCE}\n      cacheType: ServiceAccount\n      requireServiceAccount: true\n      \
             requiredServiceAccountAnnotationKeys: [\"{ROBOT_KEY}\"]\n      optionalServiceAccountAnnotationKeys: [\"example.com/host\"]\n"
        ),
    )
    .expect("write provider config");
    let kubeconfig = api.kubeconfig(dir).display().to_string();
    let registry_config = env.registry_config("", "").display().to_string();
    Cluster {
        env,
        api,
        private,
        kubeconfig,
        registry_config,
        provider_config: provider_config.display().to_string(),
        bin: bin.display().to_string(),
    }
}

impl Cluster {
    fn provider_args(&self) -> Vec<&str> {
        vec![
            "--registry-config",
            &self.registry_config,
            "--image-credential-provider-config",
            &self.provider_config,
            "--image-credential-provider-bin-dir",
            &self.bin,
        ]
    }

    async fn check(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--log", "trace", "check", "--kubeconfig", &self.kubeconfig, "-o", "json", "-A"];
        args.extend(self.provider_args());
        args.extend_from_slice(extra);
        run_pullcheck(&args).await
    }
}

/// (namespace, state, error) of every workload in a JSON report.
fn states(report: &Value) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for image in report["images"].as_array().expect("images") {
        for user in image["workloads"].as_array().expect("workloads") {
            found.push((
                user["namespace"].as_str().unwrap_or_default().to_string(),
                image["state"].as_str().unwrap_or_default().to_string(),
                image["error"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    found.sort();
    found
}

fn warnings(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .map_or(Vec::new(), |ws| ws.iter().map(|w| w["message"].as_str().unwrap_or_default().to_string()).collect())
}

/// Every form a token could leak in: whole, base64 in each alphabet, and its random part alone.
fn assert_no_token(what: &str, haystack: &str, tokens: &[String]) {
    assert!(!tokens.is_empty(), "{what}: no token was issued, nothing to look for");
    for token in tokens {
        let nonce = token.rsplit('.').next().unwrap_or(token);
        let mut forms = vec![token.clone(), nonce.to_string()];
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            forms.push(engine.encode(token));
        }
        for form in forms {
            assert!(!haystack.contains(&form), "{what}: a service account token leaked ({form:?} found)");
        }
    }
}

#[tokio::test]
async fn check_gets_a_token_per_workload_only_when_asked_to() {
    let c = cluster().await;

    // Without the flag: refused, as before, with the reason on the image.
    let out = c.check(&[]).await;
    let report = json_report(&out);
    let refused = states(&report);
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (namespace, state, error) in &refused {
        assert_eq!(state, "authentication_failure", "{namespace}: {refused:?}");
        assert!(error.contains("sa-provider: tokenAttributes (service account token mode)"), "{error}");
    }
    assert!(c.api.issued_tokens().is_empty(), "no token is requested without the flag");

    // With it: team-a's service account gets through, team-b's lacks the required annotation.
    let out = c.check(&["--service-account-token-providers"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = json_report(&out);
    let got = states(&report);
    assert_eq!(
        got.iter().map(|(ns, state, _)| (ns.as_str(), state.as_str())).collect::<Vec<_>>(),
        [("team-a", "available"), ("team-b", "authentication_failure")]
    );
    let said = warnings(&report);
    assert!(
        said.iter().any(|w| w.contains("team-b/web")
            && w.contains("service account team-b/default has no annotation example.com/robot")),
        "{said:?}"
    );
    let kinds: Vec<&Value> = report["warnings"].as_array().expect("warnings").iter().map(|w| &w["kind"]).collect();
    assert!(kinds.contains(&&json!("credential_provider")), "{kinds:?}");
    let requests: Vec<String> = c
        .api
        .requests()
        .iter()
        .filter_map(|r| r.split('?').next())
        .filter(|r| r.ends_with("/token"))
        .map(str::to_string)
        .collect();
    assert_eq!(requests, ["POST /api/v1/namespaces/team-a/serviceaccounts/puller/token"], "one token, for team-a");
    let tokens = c.api.issued_tokens();
    assert_no_token("stdout (JSON)", &String::from_utf8_lossy(&out.stdout), &tokens);
    assert_no_token("stderr at --log trace", &stderr, &tokens);
    assert!(!stderr.contains(support::PASSWORD), "the plugin's password is not logged");

    // RBAC without create on serviceaccounts/token: a clear warning, no credentials.
    c.api.forbid_verb("create", "TokenRequest", None);
    let out = c.check(&["--service-account-token-providers"]).await;
    let report = json_report(&out);
    assert!(states(&report).iter().all(|(_, state, _)| state == "authentication_failure"), "{report}");
    let said = warnings(&report);
    assert!(said.iter().any(|w| w.contains("team-a/web") && w.contains("create serviceaccounts/token")), "{said:?}");
    assert_eq!(c.api.issued_tokens().len(), 1, "a forbidden request issues nothing");
}

#[tokio::test]
async fn manifests_have_no_service_account_token_to_give() {
    let c = cluster().await;
    let manifest = c.env.dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: team-a}}\nspec:\n  template:\n    spec:\n      \
             serviceAccountName: puller\n      containers: [{{name: app, image: \"{}\"}}]\n",
            c.private
        ),
    )
    .expect("write manifest");
    let mut args = vec!["check", "-o", "json", "-f"];
    let manifest = manifest.display().to_string();
    args.push(&manifest);
    args.extend(c.provider_args());
    args.push("--service-account-token-providers");
    let report = json_report(&run_pullcheck(&args).await);
    let got = states(&report);
    assert_eq!(got.len(), 1, "{report}");
    assert_eq!(got[0].1, "authentication_failure");
    assert!(got[0].2.contains("needs the workload's service account token, which only a cluster gives"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_probes_with_the_workloads_token_and_exports_no_token() {
    let c = cluster().await;
    let receiver = Receiver::http().await;
    let log = c.env.dir.path().join("run.log");
    let mut args = c.provider_args();
    args.extend([
        "--service-account-token-providers",
        "--window",
        "4s",
        "--tick",
        "200ms",
        "--health-addr",
        "127.0.0.1:0",
    ]);
    args.extend(["--log", "trace"]);
    let (mut child, _home) =
        support::process::spawn_run(&PathBuf::from(&c.kubeconfig), &args, Some(&receiver.endpoint), &[], &log);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let available = format!("{} is now available (was pending)", c.private);
    assert!(eventually(WAIT, || stderr().contains(&available)).await, "{}", stderr());
    assert!(
        eventually(WAIT, || receiver.received(|r| !r.logs.is_empty() && !r.traces.is_empty() && !r.metrics.is_empty()))
            .await,
        "telemetry exported"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    let tokens = c.api.issued_tokens();
    assert_no_token("run's stderr at --log trace", &stderr(), &tokens);
    let exported = receiver.received(|r| format!("{:?}{:?}{:?}", r.metrics, r.traces, r.logs));
    assert_no_token("OTLP export", &exported, &tokens);
}
