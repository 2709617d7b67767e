//! Dependencies point one way along the data flow (docs/architecture.md): sources → inventory →
//! schedule → registry → telemetry, with the shared vocabulary under all of them. A module may
//! use what lies below it, never what lies above.

use std::path::Path;

/// (files under src/, modules of this crate they may not use).
const RULES: &[(&[&str], &[&str])] = &[
    (
        &["image.rs", "name.rs", "platform.rs", "credentials/", "config/", "error.rs"],
        &["sources", "inventory", "schedule", "registry", "telemetry", "check", "report", "controller", "health"],
    ),
    (&["inventory/"], &["sources", "schedule", "registry", "telemetry", "check", "report", "controller", "health"]),
    (&["sources/"], &["schedule", "registry", "telemetry", "check", "report", "controller", "health"]),
    (&["schedule.rs"], &["sources", "inventory", "registry", "telemetry", "check", "report", "controller", "health"]),
    (&["registry/"], &["sources", "inventory", "schedule", "telemetry", "check", "report", "controller", "health"]),
    (&["telemetry/"], &["sources", "schedule", "check", "report", "controller", "health"]),
];

fn sources_under(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if path.is_dir() {
            sources_under(&path, &format!("{prefix}{name}/"), out);
        } else if name.ends_with(".rs") {
            out.push((format!("{prefix}{name}"), std::fs::read_to_string(&path).expect("read source")));
        }
    }
}

#[test]
fn dependencies_point_one_way() {
    let mut files = Vec::new();
    sources_under(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut files);
    let mut violations = Vec::new();
    for (file, text) in &files {
        // Unit tests may reach anywhere; only the module's own code counts.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (owners, forbidden) in RULES {
            if !owners.iter().any(|o| file == o || (o.ends_with('/') && file.starts_with(o))) {
                continue;
            }
            for module in *forbidden {
                if code.contains(&format!("crate::{module}::")) || code.contains(&format!("crate::{module};")) {
                    violations.push(format!("src/{file} uses crate::{module}"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
