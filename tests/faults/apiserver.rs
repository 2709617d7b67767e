//! The API server's faults (docs/operations.md, "API server faults"): `pullcheck run` (and
//! `check -A` where it applies) against the API-server harness, a real registry and the OTLP
//! receiver. Every fault checks that the exported workloads are exactly the harness's (none
//! lost, none twice, none stale), that each cause is said in a few lines at most, and that `run`
//! recovers alone: a change made after the fault shows up in the export.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::figures::{self, Row};
use super::support::apiserver::{ApiServer, TOKEN};
use super::support::otlp::{Receiver, latest_points};
use super::support::registry::{Auth, Pusher, Registry};
use super::support::{eventually, process, workload};

const WAIT: Duration = Duration::from_secs(60);
const GROUP: &str = "api server";

/// A registry with one image, the harness with workloads using it, a receiver, and what the
/// harness holds, as `Kind ns/name`.
struct Rig {
    dir: tempfile::TempDir,
    _registry: Registry,
    api: ApiServer,
    receiver: Receiver,
    image: String,
    expected: BTreeSet<String>,
}

impl Rig {
    async fn start(workloads: &[(&str, &str, &str)]) -> Rig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let registry = Registry::start(dir.path(), "anon", &storage, None, Auth::None).await;
        Pusher::new(format!("http://{}", registry.addr)).image("team/app", "v1", "amd64").await;
        let image = format!("{}/team/app:v1", registry.addr);
        let api = ApiServer::start().await;
        let receiver = Receiver::http().await;
        let mut rig = Rig { dir, _registry: registry, api, receiver, image, expected: BTreeSet::new() };
        for (kind, namespace, name) in workloads {
            rig.add(kind, namespace, name);
        }
        rig
    }

    fn add(&mut self, kind: &str, namespace: &str, name: &str) {
        self.api.apply(workload(kind, namespace, name, &self.image));
        self.expected.insert(format!("{kind} {namespace}/{name}"));
    }

    fn remove(&mut self, kind: &str, namespace: &str, name: &str) {
        self.api.delete(kind, namespace, name);
        self.expected.remove(&format!("{kind} {namespace}/{name}"));
    }

    /// `pullcheck run` exporting to the receiver, probing fast.
    fn run(&self, kubeconfig: &std::path::Path) -> Run {
        self.run_with(kubeconfig, &[])
    }

    fn run_with(&self, kubeconfig: &std::path::Path, extra: &[&str]) -> Run {
        let log = self.dir.path().join(format!("run-{}.log", super::support::rand_suffix()));
        let mut args = vec!["--window", "4s", "--tick", "200ms", "--health-addr", "off", "--platform", "linux/amd64"];
        args.extend_from_slice(extra);
        let (child, home) = process::spawn_run(kubeconfig, &args, Some(&self.receiver.endpoint), &[], &log);
        Run { child, log, _home: home, started: Instant::now() }
    }

    /// The workloads of the newest export of `pullcheck.image.available`, one entry per point
    /// (a workload exported twice shows as a count above the set's).
    fn exported(&self) -> (BTreeSet<String>, usize) {
        let points = self.receiver.received(|r| latest_points(r, "pullcheck.image.available"));
        let names = ["k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.pod.name"];
        let set = points
            .iter()
            .map(|(a, _)| {
                let name = names.iter().find_map(|k| a.get(*k)).map_or("?", String::as_str);
                let kind = a.get("pullcheck.workload.kind").map_or("?", String::as_str);
                let namespace = a.get("k8s.namespace.name").map_or("?", String::as_str);
                format!("{kind} {namespace}/{name}")
            })
            .collect();
        (set, points.len())
    }

    fn exports_exactly(&self, expected: &BTreeSet<String>) -> bool {
        let (set, points) = self.exported();
        set == *expected && points == expected.len()
    }

    /// Waits until the export is exactly the harness's workloads.
    async fn converges(&self, run: &Run, what: &str) {
        let expected = self.expected.clone();
        assert!(
            eventually(WAIT, || self.exports_exactly(&expected)).await,
            "{what}: exported {:?}, the harness holds {expected:?}\n{}",
            self.exported(),
            run.log()
        );
    }
}

struct Run {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    _home: tempfile::TempDir,
    started: Instant,
}

impl Run {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `text`.
    fn lines_with(&self, text: &str) -> Vec<String> {
        self.log().lines().filter(|l| l.contains(text)).map(str::to_string).collect()
    }

    /// Warning and error lines.
    fn warnings(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).map(str::to_string).collect()
    }

    /// Peak RSS and time since start; then SIGTERM, and the log checked for panics.
    async fn finish(mut self) -> (u64, u128) {
        let pid = self.child.id().expect("running");
        let peak = process::status_kib(pid, "VmHWM");
        let millis = self.started.elapsed().as_millis();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let log = self.log();
        assert!(!log.contains("panicked at"), "pullcheck panicked:\n{log}");
        figures::assert_no_leak("run's log", &log, &[(None, TOKEN)]);
        assert!(status.is_ok_and(|s| s.is_ok_and(|s| s.success())), "run exits cleanly on SIGTERM:\n{log}");
        (peak, millis)
    }
}

/// `check -A -o json` against `kubeconfig` under GNU time.
async fn check(kubeconfig: &std::path::Path, extra: &[&str]) -> figures::Measured {
    let (mut command, _home) = process::pullcheck();
    command
        .args(["check", "-A", "-o", "json", "--platform", "linux/amd64", "--kubeconfig"])
        .arg(kubeconfig)
        .args(extra);
    let measured = figures::measure(command).await;
    figures::assert_no_panic("check -A", &measured);
    let written = format!("{}{}", measured.stdout(), measured.stderr());
    figures::assert_no_leak("check -A", &written, &[(None, TOKEN)]);
    measured
}

/// The workloads of a `check -o json` report, as `Kind ns/name`.
fn checked(run: &figures::Measured) -> (BTreeSet<String>, usize) {
    let report = run.json();
    let mut all = Vec::new();
    for image in report["images"].as_array().into_iter().flatten() {
        for user in image["workloads"].as_array().into_iter().flatten() {
            all.push(format!(
                "{} {}/{}",
                user["kind"].as_str().unwrap_or("?"),
                user["namespace"].as_str().unwrap_or("?"),
                user["name"].as_str().unwrap_or("?")
            ));
        }
    }
    let count = all.len();
    (all.into_iter().collect(), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_dropped_every_two_seconds() {
    let mut rig = Rig::start(&[("Deployment", "shop", "web"), ("Deployment", "shop", "api")]).await;
    let run = rig.run(&rig.api.kubeconfig(rig.dir.path()));
    rig.converges(&run, "before the fault").await;
    // The fault's own cadence: every watch cut every 2 s for 10 s, a change between two cuts.
    for round in 0..5 {
        rig.api.disconnect_watches();
        rig.add("Deployment", "shop", &format!("added-{round}"));
        if round == 2 {
            rig.remove("Deployment", "shop", "api");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    rig.converges(&run, "during the drops").await;
    rig.add("Deployment", "shop", "after");
    rig.converges(&run, "after the drops").await;
    let warnings = run.warnings();
    assert!(warnings.is_empty(), "a watch that ends is resumed, nothing to warn about: {warnings:?}");
    let relists = rig
        .api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /apis/apps/v1/deployments?") && !r.contains("watch="))
        .count();
    assert_eq!(relists, 1, "resumed from the last version, not listed again");
    let (peak_rss_kib, millis) = run.finish().await;
    figures::record(Row {
        group: GROUP,
        fault: "every watch dropped every 2 s for 10 s, changes in between (run)".into(),
        expected: "watches resumed from their last resourceVersion; workloads exact; no warning".into(),
        got: format!("{} workloads exact, 1 list per kind (no relist), 0 warnings", rig.expected.len()),
        peak_rss_kib,
        millis,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_storm_forces_relists_and_is_said_once() {
    let mut rig = Rig::start(&[("Deployment", "shop", "web"), ("StatefulSet", "db", "pg")]).await;
    let run = rig.run(&rig.api.kubeconfig(rig.dir.path()));
    rig.converges(&run, "before the fault").await;
    let lists_before = lists_of(&rig.api, "deployments");
    let storm = Duration::from_secs(5);
    let began = Instant::now();
    rig.api.gone_storm(storm);
    rig.remove("StatefulSet", "db", "pg");
    rig.add("Deployment", "shop", "during");
    rig.converges(&run, "during the storm").await;
    let relisted = || lists_of(&rig.api, "deployments") >= lists_before + 2;
    assert!(eventually(WAIT, relisted).await, "every 410 makes it list again: {:?}", rig.api.requests());
    tokio::time::sleep(storm.saturating_sub(began.elapsed())).await;
    rig.converges(&run, "after the storm").await;
    rig.add("StatefulSet", "db", "after");
    rig.converges(&run, "a change after the storm").await;
    let gone_answers = rig.api.requests().iter().filter(|r| r.contains("watch=")).count();
    let said = run.lines_with("410 Gone");
    assert_eq!(said.len(), 1, "one line for the cause, not one per 410 and kind: {said:?}\n{}", run.log());
    assert!(said[0].contains("WARN") && said[0].contains("listing again"), "{said:?}");
    let (peak_rss_kib, millis) = run.finish().await;
    figures::record(Row {
        group: GROUP,
        fault: "410 storm: every watch answered 410 Gone for 5 s (run)".into(),
        expected: "relist each time; workloads exact; the cause said once".into(),
        got: format!(
            "{} more deployment lists, {gone_answers} watch requests in all; workloads exact; 1 warning line",
            lists_of(&rig.api, "deployments") - lists_before
        ),
        peak_rss_kib,
        millis,
    });
}

/// `count` requests were answered 429 and each was sent again no sooner than its Retry-After (1 s).
async fn assert_retry_after_honoured(api: &ApiServer, count: usize) {
    let throttled = api.throttled();
    assert_eq!(throttled.len(), count, "{throttled:?}");
    let sent_again = || {
        let requests = api.timed_requests();
        throttled.iter().all(|(at, request)| requests.iter().any(|(later, r)| later > at && r == request))
    };
    assert!(eventually(WAIT, sent_again).await, "every throttled request sent again: {:?}", api.requests());
    let requests = api.timed_requests();
    for (at, request) in &throttled {
        let again = requests.iter().find(|(later, r)| later > at && r == request);
        let waited = again.map(|(later, _)| *later - *at);
        assert!(
            waited.is_some_and(|w| w >= Duration::from_millis(950)),
            "{request} sent again after {waited:?}: {requests:?}"
        );
    }
}

fn lists_of(api: &ApiServer, plural: &str) -> usize {
    api.requests().iter().filter(|r| r.contains(&format!("/{plural}?")) && !r.contains("watch=")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_fairness_429_with_retry_after_is_waited_out() {
    let mut rig = Rig::start(&[("Deployment", "shop", "web"), ("Deployment", "ops", "cron")]).await;
    let kubeconfig = rig.api.kubeconfig(rig.dir.path());
    rig.api.throttle(3, 1);
    let checked_run = check(&kubeconfig, &[]).await;
    assert_eq!(checked_run.output.status.code(), Some(0), "{}", checked_run.stderr());
    assert_eq!(checked(&checked_run), (rig.expected.clone(), rig.expected.len()), "check -A: every workload once");
    assert_retry_after_honoured(&rig.api, 3).await;
    rig.api.throttle(3, 1);
    let run = rig.run(&kubeconfig);
    rig.converges(&run, "after the throttling").await;
    rig.add("Deployment", "shop", "after");
    rig.converges(&run, "a change after the throttling").await;
    assert_retry_after_honoured(&rig.api, 6).await;
    assert!(run.warnings().is_empty(), "waited out by the client's retries: {:?}", run.warnings());
    let (peak_rss_kib, millis) = run.finish().await;
    figures::record(Row {
        group: GROUP,
        fault: "429 TooManyRequests, Retry-After: 1, on 3 lists and watches in a row (run; check -A)".into(),
        expected: "waited out (Retry-After honoured); workloads exact".into(),
        got: format!(
            "run: workloads exact, 3 requests answered 429 each retried ≥ 1 s later, 0 warnings; check -A: the same, exit 0 in {:.1} s, {} workloads",
            checked_run.elapsed.as_secs_f64(),
            rig.expected.len() - 1
        ),
        peak_rss_kib: peak_rss_kib.max(checked_run.peak_rss_kib),
        millis,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_revoked_on_one_kind_while_running_withdraws_its_workloads() {
    let mut rig =
        Rig::start(&[("Deployment", "shop", "web"), ("StatefulSet", "db", "pg"), ("StatefulSet", "db", "cache")]).await;
    let run = rig.run_with(&rig.api.kubeconfig(rig.dir.path()), &["--rbac-recheck", "2s"]);
    rig.converges(&run, "before the fault").await;
    let granted = rig.expected.clone();
    // RBAC is checked per request: the watches open carry on until they end.
    rig.api.forbid("StatefulSet");
    rig.api.disconnect_watches();
    rig.expected.retain(|w| !w.starts_with("StatefulSet "));
    rig.converges(&run, "the forbidden kind's workloads withdrawn").await;
    rig.add("Deployment", "shop", "after");
    rig.converges(&run, "the other kinds unaffected").await;
    // Rechecked every 2 s: still forbidden a few times over, said once.
    let statefulset_lists = || lists_of(&rig.api, "statefulsets");
    let before = statefulset_lists();
    assert!(eventually(WAIT, || statefulset_lists() >= before + 2).await, "rechecked: {:?}", rig.api.requests());
    assert!(rig.exports_exactly(&rig.expected), "still withdrawn: {:?}", rig.exported());
    let said = run.lines_with("forbidden by RBAC");
    assert_eq!(said.len(), 1, "said once: {said:?}\n{}", run.log());
    assert!(said[0].contains("WARN") && said[0].contains("StatefulSets cluster-wide"), "{said:?}");
    // Granted again: back without a restart.
    rig.api.allow("StatefulSet");
    rig.expected.extend(granted);
    rig.converges(&run, "granted again").await;
    let back = run.lines_with("may be watched again");
    assert_eq!(back.len(), 1, "{back:?}\n{}", run.log());
    let (peak_rss_kib, millis) = run.finish().await;
    figures::record(Row {
        group: GROUP,
        fault: "403 on StatefulSets from some point on (RBAC revoked while running), then granted again".into(),
        expected: "one warning; the kind's workloads withdrawn from the export; other kinds unaffected; back when granted".into(),
        got: "1 warning line; 2 StatefulSets withdrawn, Deployments exact and a new one exported; rechecked every 2 s (--rbac-recheck), back within one recheck of the grant, 1 info line".into(),
        peak_rss_kib,
        millis,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_restarting_with_a_new_history() {
    let mut rig =
        Rig::start(&[("Deployment", "shop", "web"), ("Deployment", "shop", "api"), ("StatefulSet", "db", "pg")]).await;
    let kubeconfig = rig.api.kubeconfig(rig.dir.path());
    let run = rig.run(&kubeconfig);
    rig.converges(&run, "before the fault").await;
    // A history longer than the store, so that the new one restarts below the version watched.
    for round in 0..10 {
        let mut web = workload("Deployment", "shop", "web", &rig.image);
        web["metadata"]["labels"] = serde_json::json!({"round": round.to_string()});
        rig.api.apply(web);
    }
    rig.api.stop().await;
    let down = Instant::now();
    // While it is down: check -A fails at once, saying why; the store changes behind run's back.
    let refused = check(&kubeconfig, &[]).await;
    assert_eq!(refused.output.status.code(), Some(2), "{}", refused.stderr());
    assert!(refused.json()["images"].as_array().is_none_or(|i| i.is_empty()), "nothing checked: {}", refused.stdout());
    let refused_lines: Vec<String> = refused.stderr().lines().map(str::to_string).collect();
    assert_eq!(refused_lines.len(), 1, "one line for the cause: {refused_lines:?}");
    assert!(refused_lines[0].contains("connection refused"), "{refused_lines:?}");
    rig.remove("Deployment", "shop", "api");
    rig.add("Deployment", "shop", "while-down");
    let downtime = Duration::from_secs(10);
    tokio::time::sleep(downtime.saturating_sub(down.elapsed())).await;
    rig.api.start_again(true).await;
    rig.converges(&run, "after the restart").await;
    rig.add("StatefulSet", "db", "after");
    rig.converges(&run, "a change after the restart").await;
    let unreachable = run.lines_with("connection refused");
    assert!(
        (1..=2).contains(&unreachable.len()),
        "the outage said once (not per retry and kind): {unreachable:?}\n{}",
        run.log()
    );
    let restarted = run.lines_with("history restarted");
    assert_eq!(restarted.len(), 1, "{restarted:?}\n{}", run.log());
    assert!(run.warnings().len() <= 3, "{:?}", run.warnings());
    let (peak_rss_kib, millis) = run.finish().await;
    figures::record(Row {
        group: GROUP,
        fault: "API server down 10 s (connections refused; scaled down from 30 s), back with a new resourceVersion history (run; check -A while down)".into(),
        expected: "the outage said once; relist on the unknown version; workloads exact; check -A: exit 2, one line".into(),
        got: format!(
            "run: {} line(s) for the refusals, 1 for the new history, workloads exact; check -A: exit 2 in {:.2} s, \"{}\"",
            unreachable.len(),
            refused.elapsed.as_secs_f64(),
            refused_lines[0]
        ),
        peak_rss_kib: peak_rss_kib.max(refused.peak_rss_kib),
        millis,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_takes_twenty_seconds() {
    let mut rig = Rig::start(&[("Deployment", "shop", "web"), ("StatefulSet", "db", "pg")]).await;
    let kubeconfig = rig.api.kubeconfig(rig.dir.path());
    let slow = Duration::from_secs(20);
    rig.api.slow_lists("Deployment", Some(slow));
    let (checked_run, run) = tokio::join!(check(&kubeconfig, &[]), async { rig.run(&kubeconfig) });
    assert_eq!(checked_run.output.status.code(), Some(0), "{}", checked_run.stderr());
    assert_eq!(checked(&checked_run), (rig.expected.clone(), rig.expected.len()));
    assert!(checked_run.elapsed >= slow, "the list was waited for");
    rig.converges(&run, "after the slow list").await;
    rig.api.slow_lists("Deployment", None);
    rig.add("Deployment", "shop", "after");
    rig.converges(&run, "a change after").await;
    assert!(run.warnings().is_empty(), "a slow list is no failure: {:?}", run.warnings());
    let (peak_rss_kib, millis) = run.finish().await;
    figures::record(Row {
        group: GROUP,
        fault: "the Deployments list answered after 20 s (run; check -A)".into(),
        expected: "waited for (the read timeout is 330 s); workloads exact; no warning".into(),
        got: format!(
            "run: workloads exact, 0 warnings; check -A: exit 0 in {:.1} s, every workload once",
            checked_run.elapsed.as_secs_f64()
        ),
        peak_rss_kib: peak_rss_kib.max(checked_run.peak_rss_kib),
        millis,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continue_token_expiring_mid_list() {
    let mut rig = Rig::start(&[]).await;
    for name in ["a", "b", "c", "d"] {
        rig.add("Deployment", "shop", name);
    }
    rig.add("StatefulSet", "db", "pg");
    rig.expected.insert("Pod ops/moved-on".into());
    rig.api.page_size(1);
    rig.api.slow_lists("Deployment", Some(Duration::from_millis(500)));
    let kubeconfig = rig.api.kubeconfig(rig.dir.path());
    let pages = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/apps/v1/deployments?") && r.contains("continue="))
            .count()
    };
    // Compacted once the list is two pages in: its next page is answered 410 Expired.
    let compact = async {
        assert!(eventually(WAIT, || pages(&rig.api) >= 1).await, "the list is paged");
        rig.api.compact();
        // The cluster moves on (the harness expires the version it compacted at itself).
        rig.api.apply(workload("Pod", "ops", "moved-on", &rig.image));
    };
    let (checked_run, ()) = tokio::join!(check(&kubeconfig, &[]), compact);
    assert_eq!(checked_run.output.status.code(), Some(0), "{}", checked_run.stderr());
    assert_eq!(checked(&checked_run), (rig.expected.clone(), rig.expected.len()), "every workload once");
    assert!(checked_run.stderr().is_empty(), "{}", checked_run.stderr());
    let starts = lists_of(&rig.api, "deployments") - pages(&rig.api);
    assert_eq!(starts, 2, "listed again from the start: {:?}", rig.api.requests());
    figures::record(Row {
        group: GROUP,
        fault: "the continue token of a paged list expired mid-list (410 after compaction; check -A)".into(),
        expected: "the kind listed again from the start; every workload once; exit 0".into(),
        got: format!(
            "listed twice, {} workloads exact, exit 0 in {:.1} s, nothing on stderr",
            rig.expected.len(),
            checked_run.elapsed.as_secs_f64()
        ),
        peak_rss_kib: checked_run.peak_rss_kib,
        millis: checked_run.elapsed.as_millis(),
    });
}

/// A kubeconfig whose user's credential comes from `plugin` (an executable script).
fn exec_kubeconfig(dir: &std::path::Path, server: &str, name: &str, plugin: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(format!("plugin-{name}"));
    std::fs::write(&script, format!("#!/bin/sh\n{plugin}\n")).expect("write plugin");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster: {{server: '{server}'}}\nusers:\n- name: tester\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\ncontexts:\n- name: harness\n  context: {{cluster: harness, user: tester}}\ncurrent-context: harness\n",
        script.display()
    );
    let path = dir.join(format!("kubeconfig-{name}"));
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_credential_plugin_that_hangs_or_prints_garbage() {
    let rig = Rig::start(&[("Deployment", "shop", "web")]).await;
    let dir = rig.dir.path();
    let pids = dir.join("hung-pids");
    let hangs =
        exec_kubeconfig(dir, &rig.api.url(), "hangs", &format!("echo $$ >> {}\nexec sleep 300", pids.display()));
    // Garbage around a token: the error must not quote it.
    let secret = "exec-token-s3cr3t";
    let garbage =
        exec_kubeconfig(dir, &rig.api.url(), "garbage", &format!("echo '{{\"status\": {{\"token\": \"{secret}\"'"));
    let timeout = ["--kube-exec-timeout", "3s"];
    let run_with = |kubeconfig: std::path::PathBuf| async move {
        let (mut command, _home) = process::pullcheck();
        command.arg("run").arg("--kubeconfig").arg(kubeconfig).args(timeout).args(["--health-addr", "off"]);
        command.env("OTEL_SDK_DISABLED", "true");
        let measured = figures::measure(command).await;
        figures::assert_no_panic("run", &measured);
        measured
    };
    // Each bounded by the test's own wait: without the fix a hung plugin hangs pullcheck for good.
    let bound = Duration::from_secs(20);
    let all = tokio::time::timeout(
        bound,
        futures_util::future::join4(
            check(&hangs, &timeout),
            run_with(hangs.clone()),
            check(&garbage, &timeout),
            run_with(garbage.clone()),
        ),
    )
    .await;
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    let (check_hung, run_hung, check_garbage, run_garbage) =
        all.expect("pullcheck gives up on the plugin in bounded time");
    for (what, measured, says) in [
        ("check, hung plugin", &check_hung, "printed no credential within 3s"),
        ("run, hung plugin", &run_hung, "printed no credential within 3s"),
        ("check, garbage", &check_garbage, "gave no credential"),
        ("run, garbage", &run_garbage, "gave no credential"),
    ] {
        let stderr = measured.stderr();
        assert_eq!(measured.output.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains("exec credential plugin") && stderr.contains(says), "{what}: {stderr}");
        assert!(stderr.lines().count() <= 2, "{what}: a clear error, not a dump: {stderr}");
        figures::assert_no_leak(what, &format!("{}{stderr}", measured.stdout()), &[(None, secret)]);
    }
    let said = |m: &figures::Measured| m.stderr().lines().next().unwrap_or_default().to_string();
    figures::record(Row {
        group: GROUP,
        fault: "kubeconfig exec credential plugin that hangs (run; check -A; --kube-exec-timeout 3s)".into(),
        expected: "a clear error in bounded time, exit 2".into(),
        got: format!("exit 2 after {:.1} s: \"{}\"", run_hung.elapsed.as_secs_f64(), said(&run_hung)),
        peak_rss_kib: check_hung.peak_rss_kib.max(run_hung.peak_rss_kib),
        millis: check_hung.elapsed.max(run_hung.elapsed).as_millis(),
    });
    figures::record(Row {
        group: GROUP,
        fault: "kubeconfig exec credential plugin that prints garbage (run; check -A)".into(),
        expected: "a clear error at once, exit 2".into(),
        got: format!("exit 2 after {:.2} s: \"{}\"", run_garbage.elapsed.as_secs_f64(), said(&run_garbage)),
        peak_rss_kib: check_garbage.peak_rss_kib.max(run_garbage.peak_rss_kib),
        millis: check_garbage.elapsed.max(run_garbage.elapsed).as_millis(),
    });
}
