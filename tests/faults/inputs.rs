//! Inputs built to hurt (docs/check.md, "Inputs"): a broken Secret in a rendered chart, control
//! characters in references and names, and inputs that are large on purpose. None needs a
//! registry: every image points at a loopback port that refuses connections, so each probe
//! answers `registry_unavailable` at once and the figures are the input side's own.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::figures::{self, Measured, Row};
use super::support::RefusedPort;
use super::support::process::pullcheck;

/// `pullcheck check -f <file> <args>` under GNU time; one attempt per probe, no waiting.
async fn check(file: &Path, args: &[&str]) -> Measured {
    let (mut command, home) = pullcheck();
    command.arg("check").arg("-f").arg(file).args(["--retries", "0", "--no-progress"]).args(args);
    let run = figures::measure(command).await;
    drop(home);
    run
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The 1-based line of `text` holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap_or_else(|| panic!("{needle} in the text"))
}

fn entry<'a>(report: &'a serde_json::Value, image: &str) -> &'a serde_json::Value {
    report["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["image"] == image))
        .unwrap_or_else(|| panic!("{image} in {report}"))
}

/// Bytes a terminal acts on: C0 controls but the line feed ending each line, DEL, and the C1
/// controls' UTF-8 forms (`\u{9b}` is a CSI on some terminals).
fn raw_controls(text: &str) -> Vec<char> {
    text.chars().filter(|c| *c != '\n' && c.is_control()).collect()
}

const STRING_DATA_PASSWORD: &str = "sd-hunter2-7f3a";
const DATA_PASSWORD: &str = "data-hunter2-91c4";
const DOCKER_USER: &str = "robot";
const DOCKER_PASSWORD: &str = "docker-hunter2-55e1";

/// A rendered chart whose Secrets are broken, each with its password next to the broken line
/// or on it, and one good Deployment.
fn broken_secrets_chart(image: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let docker_auth = b64(&format!("{DOCKER_USER}:{DOCKER_PASSWORD}"));
    let docker_config = format!(r#"{{"auths":{{"registry.example":{{"auth":"{docker_auth}"}}}}}}"#);
    format!(
        r#"# Source: shop/templates/secret.yaml
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: shop}}
stringData:
  user: admin
  password: {STRING_DATA_PASSWORD}: broken
  host: db.shop
---
# Source: shop/templates/secret-data.yaml
apiVersion: v1
kind: Secret
metadata: {{name: db-data, namespace: shop}}
data:
  password: {data}
  token: [{data}
---
# Source: shop/templates/pull-secret.yaml
apiVersion: v1
kind: Secret
type: kubernetes.io/dockerconfigjson
metadata: {{name: regcred, namespace: shop}}
data:
  .dockerconfigjson: "{docker_b64}
---
# Source: shop/templates/pull-secret-plain.yaml
apiVersion: v1
kind: Secret
type: kubernetes.io/dockerconfigjson
metadata: {{name: regcred-plain, namespace: shop}}
stringData:
  .dockerconfigjson: {docker_config}}}
---
# Source: shop/templates/web.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: shop}}
spec:
  template:
    spec:
      imagePullSecrets: [{{name: regcred}}]
      containers: [{{name: app, image: "{image}"}}]
"#,
        data = b64(DATA_PASSWORD),
        docker_b64 = b64(&docker_config),
    )
}

#[tokio::test]
async fn a_broken_secret_is_located_and_never_quoted() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = format!("{}/shop/web:v1", registry.addr);
    let text = broken_secrets_chart(&image);
    let yaml = write(dir.path(), "chart.yaml", &text);
    // The same Secret as JSON: serde_json's own messages.
    let json_text = format!(
        "{{\"kind\": \"Secret\", \"metadata\": {{\"name\": \"j\"}},\n \"stringData\": {{\"password\": \"{STRING_DATA_PASSWORD}\" \"more\": 1}}}}\n"
    );
    let json_file = write(dir.path(), "secret.json", &json_text);
    let secrets = [(None, STRING_DATA_PASSWORD), (None, DATA_PASSWORD), (Some(DOCKER_USER), DOCKER_PASSWORD)];

    let run = check(&yaml, &["-o", "json"]).await;
    figures::assert_no_panic("broken secret, json", &run);
    let table = check(&yaml, &["-o", "table"]).await;
    figures::assert_no_panic("broken secret, table", &table);
    let json_run = check(&json_file, &["-o", "json"]).await;
    for (what, out) in [("json", &run), ("table", &table), ("json input", &json_run)] {
        figures::assert_no_leak(&format!("{what} stdout"), &out.stdout(), &secrets);
        figures::assert_no_leak(&format!("{what} stderr"), &out.stderr(), &secrets);
    }
    assert_eq!(run.output.status.code(), Some(2), "an unreadable document is exit 2\n{}", run.stderr());

    let report = run.json();
    let errors = report["input_errors"].as_array().expect("input_errors");
    let located: Vec<(u64, String)> = errors
        .iter()
        .map(|e| (e["document"].as_u64().unwrap_or(0), e["error"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(located.iter().map(|(d, _)| *d).collect::<Vec<_>>(), [1, 2, 3, 4], "{located:?}");
    // Each error names the line of the file (not of its document) where the problem is.
    let lines = [
        line_of(&text, STRING_DATA_PASSWORD),
        line_of(&text, "token: ["),
        line_of(&text, "  .dockerconfigjson: \""),
        line_of(&text, "  .dockerconfigjson: {"),
    ];
    for ((document, error), line) in located.iter().zip(lines) {
        // An unclosed quote or bracket is noticed where the document ends, not where it opened.
        let near = (line..line + 3).any(|l| error.contains(&format!("line {l} ")));
        assert!(near, "document {document}: {error:?} should name line {line} (or the next two)");
        assert!(error.contains("column "), "{error}");
    }
    let stderr = run.stderr();
    assert!(stderr.contains(&format!("chart.yaml: document 1: line {} column", lines[0])), "{stderr}");
    let web = entry(&report, &image);
    assert_eq!(web["state"], "registry_unavailable", "the good Deployment is still probed: {web}");
    assert_eq!(web["workloads"][0]["name"], "web");
    let json_errors = json_run.json()["input_errors"].clone();
    assert!(json_errors[0]["error"].as_str().is_some_and(|e| e.contains("line 2 column")), "{json_errors}");

    figures::record(Row {
        group: "input",
        fault: "a broken Secret in a rendered chart (stringData, data, .dockerconfigjson)".into(),
        expected: "each error names document, line and column, quotes nothing; the good workload probed; exit 2".into(),
        got: format!("{}; web {}; exit 2", located[0].1, web["state"].as_str().unwrap_or_default()),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

#[tokio::test]
async fn control_characters_are_shown_escaped_one_row_each() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = registry.addr.to_string();
    // YAML's double-quoted escapes: \e ESC, \a BEL, \0 NUL, \r \n, \x9b a C1 CSI.
    let images = [
        r"\e[2J\e[31mred:1",
        r"app:v1\a",
        r"app\0:v1",
        r"app:v1\r\navailable  evil/app:v1",
        r"app:v1\x9b31m",
        r"app:v1\t\x7f",
    ];
    let containers: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| format!("      - {{name: \"c{i}\\e]0;title\\a\", image: \"{host}/{image}\"}}"))
        .collect();
    let text = format!(
        "kind: Deployment\nmetadata: {{name: \"web\\e[8m\", namespace: \"shop\\r\\nerror: injected\"}}\nspec:\n  template:\n    spec:\n      containers:\n{}\n---\nkind: Deployment\nmetadata: {{name: \"no-image\\e[41m\"}}\nspec: {{template: {{spec: {{containers: [{{name: \"x\\ey\"}}]}}}}}}\n",
        containers.join("\n")
    );
    let file = write(dir.path(), "controls.yaml", &text);

    let table = check(&file, &["-o", "table"]).await;
    figures::assert_no_panic("control characters, table", &table);
    let json = check(&file, &["-o", "json"]).await;
    figures::assert_no_panic("control characters, json", &json);
    let (stdout, stderr) = (table.stdout(), table.stderr());
    assert_eq!(raw_controls(&stdout), Vec::<char>::new(), "no raw control character in the table:\n{stdout:?}");
    assert_eq!(raw_controls(&stderr), Vec::<char>::new(), "no raw control character on stderr:\n{stderr:?}");
    assert_eq!(raw_controls(&json.stderr()), Vec::<char>::new(), "{:?}", json.stderr());
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("bad_image_format")).collect();
    assert_eq!(rows.len(), images.len(), "one row per image:\n{stdout}");
    assert!(stdout.contains(r"\x1b[2J\x1b[31mred:1"), "shown escaped:\n{stdout}");
    assert!(stdout.contains(r"app:v1\r\navailable"), "{stdout}");
    assert!(stdout.contains(r"\u{9b}31m"), "{stdout}");
    assert!(stdout.contains(r"shop\r\nerror: injected/web\x1b[8m"), "the workload escaped too:\n{stdout}");
    assert!(stderr.contains(r"no-image\x1b[41m"), "an input error's name escaped:\n{stderr}");
    assert!(stdout.lines().all(|l| !l.starts_with("available") && !l.starts_with("error: injected")), "{stdout}");
    // JSON keeps the text as it is: a script reads the reference as written.
    let report = json.json();
    let written = format!("{host}/app:v1\u{7}");
    assert_eq!(entry(&report, &written)["state"], "bad_image_format");
    assert_eq!(report["images"].as_array().map(Vec::len), Some(images.len()));

    figures::record(Row {
        group: "input",
        fault: "control characters (ESC, BEL, NUL, CR/LF, C1, DEL) in image references and names".into(),
        expected: "bad_image_format, one table row each, every control character shown escaped".into(),
        got: format!("{} rows, no raw control byte: {}", rows.len(), rows[0].split_whitespace().nth(1).unwrap_or("")),
        peak_rss_kib: table.peak_rss_kib,
        millis: table.elapsed.as_millis(),
    });
}

/// 50 MiB of Deployments in 151,616 documents, as a big rendered chart, over 16 images.
fn huge_stream(registry: &str) -> String {
    const DOCUMENTS: usize = 151_616;
    const SIZE: usize = 50 << 20;
    let mut text = String::with_capacity(SIZE + 4096);
    for i in 0..DOCUMENTS {
        let start = text.len();
        text.push_str(&format!(
            "---\n# Source: shop/templates/web.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{i:06}\n  namespace: team-{:02}\n  labels: {{app: web-{i:06}, chart: shop-1.2.3}}\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n      - name: app\n        image: \"{registry}/team/app:v{}\"\n        ports: [{{containerPort: 8080}}]\n",
            i % 100,
            i % 16
        ));
        // Pad each document to its share of the 50 MiB with a comment, as charts carry.
        let share = SIZE * (i + 1) / DOCUMENTS - SIZE * i / DOCUMENTS;
        let pad = share.saturating_sub(text.len() - start + 3);
        text.push_str(&format!("# {}\n", "x".repeat(pad)));
    }
    text
}

#[tokio::test]
async fn fifty_megabytes_of_yaml_in_bounded_memory() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = huge_stream(&registry.addr.to_string());
    let file = write(dir.path(), "huge.yaml", &text);
    let size = text.len();
    drop(text);

    let run = check(&file, &["-o", "table"]).await;
    figures::assert_no_panic("50 MB of YAML", &run);
    let stdout = run.stdout();
    assert_eq!(run.output.status.code(), Some(1), "read whole, every image unavailable\n{}", run.stderr());
    assert!(stdout.contains("16 images: 16 registry_unavailable"), "{stdout}");
    assert!(stdout.contains("+9475 more") || stdout.contains("+9476 more"), "every Deployment read:\n{stdout}");
    let mib = run.peak_rss_kib / 1024;
    // 142-163 MiB before the documents were streamed and the names and keys shared
    // (docs/reliability.md, "Inputs").
    assert!(mib < 130, "{size} bytes of YAML peaked at {mib} MiB");

    figures::record(Row {
        group: "input",
        fault: format!("{:.1} MB of YAML, 151,616 Deployments", size as f64 / 1e6),
        expected: "read whole (under the 64 MiB cap), answered, memory bounded by what is kept, not by the text".into(),
        got: format!(
            "16 images, all 151,616 workloads; peak {mib} MiB (162 MiB before: the whole text held, names and keys per container)"
        ),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

/// Billion laughs: nine levels of nine aliases, 9^9 strings once expanded, in 342 bytes.
fn alias_bomb() -> String {
    let mut text = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let aliases = vec![format!("*{}", pair[0]); 9].join(",");
        text.push_str(&format!("{}: &{} [{aliases}]\n", pair[1], pair[1]));
    }
    text
}

#[tokio::test]
async fn an_alias_bomb_is_refused_cheaply() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    let bomb = alias_bomb();
    let good = format!(
        "kind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: c, image: \"{}/app:v1\"}}]}}\n",
        registry.addr
    );
    let file = write(dir.path(), "bomb.yaml", &format!("{bomb}---\n{good}"));

    let run = check(&file, &["-o", "json"]).await;
    figures::assert_no_panic("alias bomb", &run);
    assert_eq!(run.output.status.code(), Some(2), "{}", run.stderr());
    let report = run.json();
    let error = report["input_errors"][0]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(report["input_errors"][0]["document"], 1, "{report}");
    assert!(error.contains("alias"), "refused as an alias expansion: {error}");
    assert_eq!(report["images"][0]["state"], "registry_unavailable", "the next document still read");
    let mib = run.peak_rss_kib / 1024;
    // 97 MiB before the alias limits were set (docs/reliability.md, "Inputs").
    assert!(mib < 40, "a {}-byte alias bomb peaked at {mib} MiB", bomb.len());

    figures::record(Row {
        group: "input",
        fault: format!("a {}-byte alias bomb (billion laughs)", bomb.len()),
        expected: "refused as that document's input error, cheaply; the next document read".into(),
        got: format!("{error}; peak {mib} MiB (97 MiB before the limits)"),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

#[tokio::test]
async fn ten_thousand_containers_in_one_workload() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    const CONTAINERS: usize = 10_000;
    let containers: String = (0..CONTAINERS)
        .map(|i| format!("      - {{name: c{i}, image: \"{}/team/app:v{}\"}}\n", registry.addr, i % 50))
        .collect();
    let text = format!(
        "kind: Deployment\nmetadata: {{name: wide}}\nspec:\n  template:\n    spec:\n      containers:\n{containers}"
    );
    let file = write(dir.path(), "wide.yaml", &text);

    let run = check(&file, &["-o", "json"]).await;
    figures::assert_no_panic("10,000 containers", &run);
    assert_eq!(run.output.status.code(), Some(1), "{}", run.stderr());
    let report = run.json();
    assert_eq!(report["summary"], serde_json::json!({"registry_unavailable": 50}));
    let users: usize =
        report["images"].as_array().into_iter().flatten().map(|i| i["workloads"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(users, CONTAINERS, "every container reported once");
    let mib = run.peak_rss_kib / 1024;
    assert!(mib < 60, "{CONTAINERS} containers peaked at {mib} MiB");

    figures::record(Row {
        group: "input",
        fault: format!("one Deployment with {CONTAINERS} containers over 50 images"),
        expected: "every container read and reported once; one probe per image".into(),
        got: format!("50 images, {users} containers reported; peak {mib} MiB"),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

#[tokio::test]
async fn a_ten_kilobyte_image_reference() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    let long = format!("{}/team/{}:v1", registry.addr, "a".repeat(10 * 1024));
    let text = format!("kind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: c, image: \"{long}\"}}]}}\n");
    let file = write(dir.path(), "long.yaml", &text);

    let run = check(&file, &["-o", "table"]).await;
    figures::assert_no_panic("10 KB reference", &run);
    let stdout = run.stdout();
    assert_eq!(run.output.status.code(), Some(1), "{}", run.stderr());
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("bad_image_format")).collect();
    assert_eq!(rows.len(), 1, "{stdout}");
    let detail = rows[0].rsplit("  ").next().unwrap_or_default();
    let mib = run.peak_rss_kib / 1024;
    assert!(mib < 40, "peaked at {mib} MiB");

    figures::record(Row {
        group: "input",
        fault: "a 10 KB image reference".into(),
        expected: "bad_image_format, never sent to a registry".into(),
        got: format!("bad_image_format: {detail}"),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}

#[tokio::test]
async fn a_broken_registry_config_is_located_and_never_quoted() {
    let registry = RefusedPort::bind();
    let dir = tempfile::tempdir().expect("tempdir");
    const CONFIG_PASSWORD: &str = "config-hunter2-0b7d";
    let config = write(
        dir.path(),
        "registries.yaml",
        &format!(
            "registries:\n  {}:\n    auth:\n      username: robot\n      password: {CONFIG_PASSWORD}: broken\n",
            registry.addr
        ),
    );
    let pod = format!(
        "kind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{{name: c, image: \"{}/app:v1\"}}]}}\n",
        registry.addr
    );
    let file = write(dir.path(), "pod.yaml", &pod);
    let config_arg = config.display().to_string();

    let run = check(&file, &["--registry-config", &config_arg]).await;
    figures::assert_no_panic("broken registry config", &run);
    let (stdout, stderr) = (run.stdout(), run.stderr());
    figures::assert_no_leak("stdout", &stdout, &[(Some("robot"), CONFIG_PASSWORD)]);
    figures::assert_no_leak("stderr", &stderr, &[(Some("robot"), CONFIG_PASSWORD)]);
    assert_eq!(run.output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("registries.yaml") && stderr.contains("line 5 column "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    figures::record(Row {
        group: "input",
        fault: "a broken registry config (a password line)".into(),
        expected: "exit 2, file, line and column named, the password never quoted".into(),
        got: stderr.trim().replace(&config_arg, "registries.yaml"),
        peak_rss_kib: run.peak_rss_kib,
        millis: run.elapsed.as_millis(),
    });
}
