//! Manifests on disk: files, directories (recursively) and stdin; multi-document YAML, JSON,
//! `List` kinds and Helm-rendered output. A malformed document is reported with its file and
//! index and never stops the others.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use serde::Deserialize;

use crate::inventory::record::{RecordError, record_from_object};
use crate::inventory::slim::SlimObject;
use crate::inventory::{WorkloadKind, WorkloadRecord};

/// Larger inputs are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 64 << 20;
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// A file or document that could not be read; `document` is 1-based within its file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InputError {
    pub file: String,
    pub document: Option<usize>,
    pub error: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.document {
            Some(d) => write!(f, "{}: document {d}: {}", self.file, self.error),
            None => write!(f, "{}: {}", self.file, self.error),
        }
    }
}

/// What a set of manifests references.
#[derive(Debug, Default)]
pub struct FileInventory {
    pub records: Vec<WorkloadRecord>,
    pub errors: Vec<InputError>,
    pub files: usize,
    pub documents: usize,
    /// Documents that are valid but not workloads (Services, ConfigMaps, ...).
    pub skipped: usize,
}

/// Reads every path; `-` is stdin. Directories are walked recursively for .yaml, .yml, .json.
pub fn load_paths(paths: &[PathBuf]) -> FileInventory {
    let mut inventory = FileInventory::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            let read = std::io::stdin().take(MAX_FILE_BYTES + 1).read_to_string(&mut text);
            match read {
                Ok(n) if n as u64 > MAX_FILE_BYTES => inventory.errors.push(too_large("<stdin>")),
                Ok(_) => parse_stream(&text, "<stdin>", &mut inventory),
                Err(e) => {
                    inventory.errors.push(InputError { file: "<stdin>".into(), document: None, error: e.to_string() })
                }
            }
            continue;
        }
        load_path(path, true, &mut inventory);
    }
    inventory
}

fn load_path(path: &Path, named: bool, inventory: &mut FileInventory) {
    let file = path.display().to_string();
    let io_error = |e: std::io::Error| InputError { file: file.clone(), document: None, error: e.to_string() };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return inventory.errors.push(io_error(e)),
    };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) => return inventory.errors.push(io_error(e)),
        };
        entries.sort();
        for entry in entries {
            // Symlinked directories are not followed: a link cycle must not hang a CI job.
            let is_link_dir =
                std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink()) && entry.is_dir();
            let is_manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if (entry.is_dir() && !is_link_dir) || (entry.is_file() && is_manifest) {
                load_path(&entry, false, inventory);
            }
        }
        return;
    }
    if meta.len() > MAX_FILE_BYTES {
        return inventory.errors.push(too_large(&file));
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_stream(&text, &file, inventory),
            Err(_) => inventory.errors.push(InputError { file, document: None, error: "not UTF-8 text".into() }),
        },
        Err(e) if named => inventory.errors.push(io_error(e)),
        Err(e) => inventory.errors.push(io_error(e)),
    }
}

fn too_large(file: &str) -> InputError {
    InputError { file: file.into(), document: None, error: format!("larger than {MAX_FILE_BYTES} bytes") }
}

/// Parses one file's text: a JSON value stream or YAML documents.
pub fn parse_stream(text: &str, file: &str, inventory: &mut FileInventory) {
    inventory.files += 1;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with(['{', '[']) {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        let mut index = 0;
        loop {
            index += 1;
            match stream.next() {
                None => break,
                Some(Ok(value)) => add_document(&value, file, index, inventory),
                Some(Err(e)) => {
                    // A JSON syntax error leaves no reliable place to resume.
                    inventory.errors.push(InputError {
                        file: file.into(),
                        document: Some(index),
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
        return;
    }
    for (i, doc) in split_yaml_documents(text).into_iter().enumerate() {
        let index = i + 1;
        if doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        match serde_saphyr::from_str::<Value>(doc) {
            Ok(value) => add_document(&value, file, index, inventory),
            Err(e) => {
                inventory.errors.push(InputError { file: file.into(), document: Some(index), error: e.to_string() })
            }
        }
    }
}

/// Splits at `---` document markers (and `...` ends) at the start of a line, so that one
/// broken document cannot take the rest of the stream with it.
fn split_yaml_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") || bare == "...";
        if is_marker {
            docs.push(&text[start..offset]);
            start = offset + line.len();
            if bare.starts_with("--- ") || bare.starts_with("---\t") {
                // Content on the marker line (`--- !tag`, `--- {a: 1}`) belongs to the next document.
                start = offset + 3;
            }
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

fn add_document(value: &Value, file: &str, index: usize, inventory: &mut FileInventory) {
    inventory.documents += 1;
    let mut error = |e: DocumentError| {
        inventory.errors.push(InputError { file: file.into(), document: Some(index), error: e.to_string() })
    };
    match value {
        Value::Null => inventory.documents -= 1,
        Value::Object(_) => match extract_object(value, &mut inventory.records) {
            Ok(true) => {}
            Ok(false) => inventory.skipped += 1,
            Err(e) => error(e),
        },
        Value::Array(items) => {
            for item in items {
                if let Err(e) = extract_object(item, &mut inventory.records) {
                    error(e);
                }
            }
        }
        _ => error(DocumentError::NotAnObject),
    }
}

/// Why a document held no usable workload.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not a Kubernetes object (a mapping with apiVersion and kind)")]
    NotAnObject,
    #[error("{kind}: items is not a list")]
    ItemsNotAList { kind: String },
    #[error("{}", .0.iter().map(|(i, e)| format!("items[{i}]: {e}")).collect::<Vec<_>>().join("; "))]
    Items(Vec<(usize, DocumentError)>),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Appends the record of a workload object (or of a List's items). `Ok(false)`: not a workload.
pub fn extract_object(object: &Value, out: &mut Vec<WorkloadRecord>) -> Result<bool, DocumentError> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.ends_with("List")
        && let Some(items) = object.get("items")
    {
        let items = items.as_array().ok_or_else(|| DocumentError::ItemsNotAList { kind: kind.to_string() })?;
        let mut found = false;
        let mut problems = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match extract_object(item, out) {
                Ok(f) => found |= f,
                Err(e) => problems.push((i, e)),
            }
        }
        return if problems.is_empty() { Ok(found) } else { Err(DocumentError::Items(problems)) };
    }
    let Some(workload_kind) = WorkloadKind::from_kind(kind) else {
        return Ok(false);
    };
    // The same slim decoding as objects from the cluster.
    let slim = SlimObject::deserialize(object)
        .map_err(|e| RecordError::Undecodable { kind: workload_kind, problem: e.to_string() })?;
    if let Some(record) = record_from_object(workload_kind, &slim)? {
        out.push(record);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ContainerRole;
    use crate::name::Name;

    fn parse(text: &str) -> FileInventory {
        let mut inv = FileInventory::default();
        parse_stream(text, "t.yaml", &mut inv);
        inv
    }

    fn images(inv: &FileInventory) -> Vec<String> {
        inv.records
            .iter()
            .flat_map(|r| {
                r.containers
                    .iter()
                    .map(move |c| format!("{}/{}/{}:{}", r.workload.kind, r.workload.name, c.name, c.image))
            })
            .collect()
    }

    #[test]
    fn every_workload_kind_and_container_role() {
        let inv = parse(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    spec:
      imagePullSecrets: [{name: regcred}]
      initContainers: [{name: migrate, image: "migrate:1"}]
      containers: [{name: app, image: "nginx:1.27"}]
---
kind: CronJob
metadata: {name: nightly}
spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: job, image: busybox}]}}}}}
---
kind: Pod
metadata: {name: debug}
spec:
  containers: [{name: main, image: alpine}]
  ephemeralContainers: [{name: dbg, image: "busybox:musl"}]
---
kind: PodTemplate
metadata: {name: tpl}
template: {spec: {containers: [{name: c, image: redis}]}}
"#,
        );
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        assert_eq!(
            images(&inv),
            vec![
                "Deployment/web/migrate:migrate:1",
                "Deployment/web/app:nginx:1.27",
                "CronJob/nightly/job:busybox",
                "Pod/debug/main:alpine",
                "Pod/debug/dbg:busybox:musl",
                "PodTemplate/tpl/c:redis",
            ]
        );
        let web = &inv.records[0];
        assert_eq!(web.workload.namespace, "shop");
        assert_eq!(web.pull_secrets[..], [Name::from("regcred")]);
        assert_eq!(web.service_account, "default");
        assert_eq!(web.containers[0].role, ContainerRole::Init);
        assert_eq!(web.replicas, Some(1));
        assert_eq!(inv.records[1].workload.namespace, "default");
        assert_eq!(inv.records[2].containers[1].role, ContainerRole::Ephemeral);
    }

    #[test]
    fn a_broken_document_does_not_stop_the_others() {
        let inv = parse(
            "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: one}]}\n---\nkind: Pod\nmetadata: {name: [\n---\nkind: Pod\nmetadata: {name: b}\nspec: {containers: [{name: c}]}\n---\nkind: Pod\nmetadata: {name: c}\nspec: {containers: [{name: c, image: three}]}\n",
        );
        assert_eq!(images(&inv), vec!["Pod/a/c:one", "Pod/c/c:three"]);
        let where_: Vec<Option<usize>> = inv.errors.iter().map(|e| e.document).collect();
        assert_eq!(where_, vec![Some(2), Some(3)]);
        assert!(inv.errors[1].error.contains("has no image"), "{}", inv.errors[1]);
    }

    #[test]
    fn helm_output_lists_and_non_workloads() {
        let inv = parse(
            "---\n# Source: chart/templates/svc.yaml\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n# Source: chart/templates/empty.yaml\n---\napiVersion: v1\nkind: List\nitems:\n- kind: Deployment\n  metadata: {name: d}\n  spec: {template: {spec: {containers: [{name: c, image: x}]}}}\n...\n",
        );
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        assert_eq!(images(&inv), vec!["Deployment/d/c:x"]);
        assert_eq!(inv.skipped, 1);
    }

    #[test]
    fn json_streams() {
        let mut inv = FileInventory::default();
        parse_stream(
            r#"{"kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"a"}]}}
               {"kind":"List","items":[{"kind":"Pod","metadata":{"name":"q"},"spec":{"containers":[{"name":"c","image":"b"}]}}]}"#,
            "t.json",
            &mut inv,
        );
        assert_eq!(images(&inv), vec!["Pod/p/c:a", "Pod/q/c:b"]);
    }

    #[test]
    fn scalars_and_wrong_shapes_are_errors() {
        let inv = parse(
            "just a string\n---\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: {}}}}\n",
        );
        assert_eq!(inv.errors.len(), 2, "{:?}", inv.errors);
        assert!(inv.errors[1].error.contains("containers is not a list"));
    }

    #[test]
    fn managed_objects_scale_and_suspension() {
        let inv = parse(
            "kind: ReplicaSet\nmetadata: {name: web-5d8, ownerReferences: [{kind: Deployment, name: web, controller: true}]}\nspec: {template: {spec: {containers: [{name: c, image: a}]}}}\n---\nkind: Pod\nmetadata: {name: p, ownerReferences: [{kind: Node, name: n1, controller: true}]}\nspec: {containers: [{name: c, image: b}]}\n---\nkind: Deployment\nmetadata: {name: zero, ownerReferences: [{kind: MyOperator, name: o, controller: true}]}\nspec: {replicas: 0, template: {spec: {serviceAccountName: builder, containers: [{name: c, image: d}]}}}\n---\nkind: CronJob\nmetadata: {name: paused}\nspec: {suspend: true, jobTemplate: {spec: {template: {spec: {containers: [{name: c, image: e}]}}}}}\n",
        );
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        assert_eq!(images(&inv), vec!["Deployment/zero/c:d", "CronJob/paused/c:e"], "managed objects are skipped");
        assert!(inv.records.iter().all(|r| r.is_disabled()));
        assert_eq!(inv.records[0].service_account, "builder");
    }

    #[test]
    fn document_markers() {
        assert_eq!(split_yaml_documents("a: 1\n---\nb: 2\n"), vec!["a: 1\n", "b: 2\n"]);
        assert_eq!(split_yaml_documents("--- {a: 1}\n"), vec!["", " {a: 1}\n"]);
        assert_eq!(split_yaml_documents("x: |\n  ---\n"), vec!["x: |\n  ---\n"]);
    }
}
