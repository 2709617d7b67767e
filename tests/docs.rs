//! The design documents describe this repository: the source-layout table of
//! docs/architecture.md names every file under src/, and only files that exist; the shipped
//! alert rules load and pass their own tests.

use std::collections::BTreeSet;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("under the crate");
            out.insert(relative.display().to_string());
        }
    }
}

#[test]
fn architecture_source_layout_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let listed: BTreeSet<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `src/"))
        .filter_map(|rest| rest.split('`').next())
        .map(|path| format!("src/{path}"))
        .collect();
    let mut actual = BTreeSet::new();
    rust_files(&root.join("src"), &mut actual);
    let missing: Vec<_> = actual.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&actual).collect();
    assert!(missing.is_empty() && stale.is_empty(), "not in the table: {missing:?}; no such file: {stale:?}");
}

#[test]
fn nothing_cites_a_document_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeSet::new();
    rust_files(&root.join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(root.join(&file)).expect("read source");
        assert!(!text.contains("DESIGN.md"), "{file} cites DESIGN.md, which is not in this repository");
    }
}

/// The alert rules load, and their unit tests (series in, alerts out) pass: promtool, from
/// Debian's `prometheus` (scripts/test installs it).
#[test]
fn alert_rules_load_and_fire_as_their_tests_say() {
    let alerts = Path::new(env!("CARGO_MANIFEST_DIR")).join("otel-config/alerts");
    for args in [["check", "rules", "prometheus-rules.yaml"], ["test", "rules", "prometheus-rules.test.yaml"]] {
        let out = std::process::Command::new("promtool").args(args).current_dir(&alerts).output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
