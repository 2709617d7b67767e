//! Child processes of the tests: the pullcheck binary cut off from whatever cluster or collector
//! the machine running the tests is set up for, and the addresses a child listens on when it was
//! told to bind port 0 and does not say which port it got.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// `pullcheck` that can reach only what the test hands it: nothing from the environment that
/// points it at a cluster or a collector (see [`cut_off`]), and `HOME` an empty directory so
/// `~/.kube/config` is not read. Keep the directory until the process ends.
pub fn pullcheck() -> (std::process::Command, tempfile::TempDir) {
    let home = tempfile::tempdir().expect("empty HOME for pullcheck");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pullcheck"));
    cut_off(&mut command, std::env::vars_os().map(|(name, _)| name), home.path());
    (command, home)
}

/// Takes from `command` every variable among `inherited` that could lead it to a real cluster or
/// collector — `KUBECONFIG`, the in-cluster `KUBERNETES_SERVICE_*`, any `PULLCHECK_*` or `OTEL_*`
/// setting — and sets `HOME` to `home`. Variables the test sets on the command afterwards stay.
pub fn cut_off(command: &mut std::process::Command, inherited: impl IntoIterator<Item = OsString>, home: &Path) {
    for name in inherited {
        let text = name.to_string_lossy();
        let reaches_out = ["PULLCHECK_", "OTEL_", "KUBERNETES_SERVICE_"].iter().any(|p| text.starts_with(p));
        if reaches_out || text == "KUBECONFIG" {
            command.env_remove(&name);
        }
    }
    command.env("HOME", home);
}

/// The same, for a test that must not block its runtime while pullcheck runs.
pub fn pullcheck_async() -> (tokio::process::Command, tempfile::TempDir) {
    let (command, home) = pullcheck();
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    (command, home)
}

/// The IPv4 TCP addresses process `pid` listens on (from /proc: its socket inodes matched
/// against the listening sockets of its network namespace).
pub fn listening(pid: u32) -> Vec<SocketAddr> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().to_string();
                    Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.contains(*inode) {
                return None;
            }
            // `0100007F:1F90`: the network-order address bytes printed as a native u32, the port in hex.
            let (ip, port) = local.split_once(':')?;
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
        })
        .collect()
}

/// Waits (bounded by `timeout`) until process `pid` listens on `count` addresses, and returns them.
pub async fn await_listening(pid: u32, count: usize, timeout: Duration) -> Vec<SocketAddr> {
    super::eventually(timeout, || listening(pid).len() >= count).await;
    let addrs = listening(pid);
    assert_eq!(addrs.len(), count, "process {pid} listens on {addrs:?}");
    addrs
}

/// Runs the binary with `args`, cut off from the machine's clusters, without blocking the
/// runtime that serves the harnesses.
pub async fn run_pullcheck(args: &[&str]) -> std::process::Output {
    let (mut command, _home) = pullcheck_async();
    command.args(args).output().await.expect("run pullcheck")
}

/// The JSON a `-o json` run printed, or a panic saying what it printed instead.
pub fn json_report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `pullcheck run` against `kubeconfig` with `args`, stderr to `log`, exporting to `otlp` (or
/// nothing: `OTEL_SDK_DISABLED`) at the fast intervals the tests wait on; `env` set on top.
pub fn spawn_run(
    kubeconfig: &std::path::Path,
    args: &[&str],
    otlp: Option<&str>,
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> (tokio::process::Child, tempfile::TempDir) {
    let (mut command, home) = pullcheck_async();
    command.arg("run").arg("--kubeconfig").arg(kubeconfig).args(args);
    match otlp {
        Some(endpoint) => command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "200"),
        None => command.env("OTEL_SDK_DISABLED", "true"),
    };
    command.envs(env.iter().copied());
    command.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(log).expect("log file"));
    (command.spawn().expect("start pullcheck run"), home)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`, `RssAnon:`); 0 when unreadable.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}
