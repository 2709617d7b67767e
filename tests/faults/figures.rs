//! One row of docs/reliability.md per fault, and the checks every fault shares: no panic, no
//! credential in anything pullcheck wrote.
//!
//! A row is written as one JSON file into `$PULLCHECK_FAULTS_OUT` when that is set (nextest runs
//! every test in its own process, so rows cannot be gathered in memory); `scripts/faults` renders
//! them into the table. Without the variable the checks still run and nothing is written.
// Shared by the groups: each uses a part (a long-running `run` reads VmHWM from /proc instead of
// measuring a finished command), so a group alone leaves some unused.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;

/// One fault's figures.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// `registry`, `registry (one host)`, `token service`, `transport`, `api server`,
    /// `collector`, `input`.
    pub group: &'static str,
    pub fault: String,
    pub expected: String,
    pub got: String,
    /// The process's peak resident memory (VmHWM), KiB.
    pub peak_rss_kib: u64,
    pub millis: u128,
}

/// Writes the row for `scripts/faults`; every row also goes to the test's output.
pub fn record(row: Row) {
    eprintln!("fault row: {row:?}");
    let Some(dir) = std::env::var_os("PULLCHECK_FAULTS_OUT").map(PathBuf::from) else { return };
    std::fs::create_dir_all(&dir).expect("faults output directory");
    let name: String = format!("{} {}", row.group, row.fault)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&row).expect("row as JSON")).expect("write row");
}

/// A finished `pullcheck` run with its peak resident memory and wall time.
pub struct Measured {
    pub output: Output,
    pub peak_rss_kib: u64,
    pub elapsed: Duration,
}

impl Measured {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The `-o json` document.
    pub fn json(&self) -> serde_json::Value {
        super::support::process::json_report(&self.output)
    }
}

/// Runs `command` (a [`super::support::process::pullcheck`] command, args set) under GNU time
/// for its peak resident memory (`%M`, the kernel's maxrss of the child), off the test's runtime
/// thread. `scripts/test` installs Debian's `time`.
pub async fn measure(command: Command) -> Measured {
    tokio::task::spawn_blocking(move || measure_blocking(command)).await.expect("measuring thread")
}

fn measure_blocking(command: Command) -> Measured {
    let report = tempfile::NamedTempFile::new().expect("time's report file");
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%M").arg("-o").arg(report.path()).arg(command.get_program()).args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(name, value),
            None => timed.env_remove(name),
        };
    }
    let start = Instant::now();
    let output = timed.output().expect("/usr/bin/time runs (scripts/test installs Debian's time)");
    let elapsed = start.elapsed();
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    // time writes "Command exited with non-zero status N" before the figure when the child fails.
    let peak_rss_kib = text.lines().filter_map(|l| l.trim().parse::<u64>().ok()).next_back().unwrap_or(0);
    Measured { output, peak_rss_kib, elapsed }
}

/// Asserts the run did not panic (Rust's panic message, or the 101 exit code it leads to).
pub fn assert_no_panic(what: &str, run: &Measured) {
    let stderr = run.stderr();
    assert!(!stderr.contains("panicked at"), "{what}: pullcheck panicked:\n{stderr}");
    assert_ne!(run.output.status.code(), Some(101), "{what}: exit 101 (a panic)\n{stderr}");
}

/// Every form a credential could leak in: as is, base64 (standard and URL-safe, padded or
/// not), and `user:password` in base64 as Basic auth sends it.
pub fn leak_forms(user: Option<&str>, secret: &str) -> Vec<String> {
    let mut plain = vec![secret.to_string()];
    if let Some(user) = user {
        plain.push(format!("{user}:{secret}"));
    }
    let mut forms = plain.clone();
    for text in &plain {
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            forms.push(engine.encode(text));
        }
    }
    forms
}

/// Asserts that none of `secrets` (in any of their [`leak_forms`]) occurs in `haystack`.
pub fn assert_no_leak(what: &str, haystack: &str, secrets: &[(Option<&str>, &str)]) {
    for (user, secret) in secrets {
        for form in leak_forms(*user, secret) {
            assert!(!haystack.contains(&form), "{what}: a credential leaked ({form:?} found)");
        }
    }
}

#[test]
fn leak_forms_cover_basic_auth() {
    let forms = leak_forms(Some("alice"), "alice-pw");
    assert!(forms.contains(&"alice-pw".to_string()));
    // What `Authorization: Basic` carries for alice:alice-pw.
    assert!(forms.contains(&"YWxpY2U6YWxpY2UtcHc=".to_string()));
    assert_no_leak("clean text", "nothing here", &[(Some("alice"), "alice-pw")]);
}
