//! Manifests on disk: files, directories (recursively) and stdin; multi-document YAML, JSON,
//! `List` kinds and Helm-rendered output. A malformed document is reported with its file and
//! index and never stops the others.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use serde::Deserialize;

use crate::inventory::record::{RecordError, record_from_object};
use crate::inventory::slim::SlimObject;
use crate::inventory::{WorkloadKind, WorkloadRecord};
use crate::name::Interner;
use crate::yaml;

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
    /// A chart's thousands of workloads share a few namespaces and images: one allocation each.
    names: Interner,
}

/// Reads every path; `-` is stdin. Directories are walked recursively for .yaml, .yml, .json.
pub fn load_paths(paths: &[PathBuf]) -> FileInventory {
    let mut inventory = FileInventory::default();
    for path in paths {
        if path.as_os_str() == "-" {
            parse_reader(std::io::stdin().lock(), "<stdin>", &mut inventory);
            continue;
        }
        load_path(path, &mut inventory);
    }
    inventory
}

fn load_path(path: &Path, inventory: &mut FileInventory) {
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
                load_path(&entry, inventory);
            }
        }
        return;
    }
    // Refused before a byte is parsed; a file that grows while read stops at the cap too.
    if meta.len() > MAX_FILE_BYTES {
        return inventory.errors.push(too_large(&file));
    }
    match std::fs::File::open(path) {
        Ok(opened) => parse_reader(BufReader::new(opened), &file, inventory),
        Err(e) => inventory.errors.push(io_error(e)),
    }
}

fn too_large(file: &str) -> InputError {
    InputError { file: file.into(), document: None, error: format!("larger than {MAX_FILE_BYTES} bytes") }
}

/// Parses one file's text: a JSON value stream or YAML documents.
pub fn parse_stream(text: &str, file: &str, inventory: &mut FileInventory) {
    parse_reader(text.as_bytes(), file, inventory);
}

/// Reads one file, a line at a time, and parses each YAML document as soon as its end is read
/// (or the JSON stream value by value): what is held is the document being read and the
/// records found, never the whole text, and no more than [`MAX_FILE_BYTES`] is read.
pub fn parse_reader(reader: impl BufRead, file: &str, inventory: &mut FileInventory) {
    inventory.files += 1;
    let mut reader = reader.take(MAX_FILE_BYTES + 1);
    let input_error = |document: Option<usize>, error: String| InputError { file: file.into(), document, error };
    let mut splitter = YamlSplitter::default();
    let mut line = Vec::new();
    let mut seen_content = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return inventory.errors.push(input_error(None, e.to_string())),
        }
        if reader.limit() == 0 {
            return inventory.errors.push(too_large(file));
        }
        let Ok(mut text) = std::str::from_utf8(&line) else {
            let at = splitter.lines_read() + 1;
            return inventory.errors.push(input_error(None, format!("line {at}: not UTF-8 text")));
        };
        if splitter.lines_read() == 0 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if !seen_content && !text.trim().is_empty() {
            seen_content = true;
            if text.trim_start().starts_with(['{', '[']) {
                let head = format!("{}{text}", splitter.into_text());
                parse_json(head.as_bytes().chain(&mut reader), file, inventory);
                if reader.limit() == 0 {
                    inventory.errors.push(too_large(file));
                }
                return;
            }
        }
        if let Some(document) = splitter.push_line(text) {
            parse_yaml_document(&document, file, inventory);
        }
    }
    parse_yaml_document(&splitter.finish(), file, inventory);
}

/// A JSON value stream, parsed one value at a time.
fn parse_json(reader: impl Read, file: &str, inventory: &mut FileInventory) {
    let stream = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    let mut index = 0;
    for next in stream {
        index += 1;
        match next {
            Ok(value) => add_document(&value, file, index, inventory),
            Err(e) => {
                // A JSON syntax error leaves no reliable place to resume.
                let error = json_problem(&e);
                return inventory.errors.push(InputError { file: file.into(), document: Some(index), error });
            }
        }
    }
}

/// What went wrong in a JSON stream and where, in serde_json's words for its syntax errors
/// (fixed texts: none quotes the input); anything else is said without its message.
fn json_problem(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = error.to_string();
    let problem = match error.classify() {
        // serde_json writes "<problem> at line L column C".
        Category::Syntax | Category::Eof => message.rsplit_once(" at line ").map_or(message.as_str(), |(p, _)| p),
        Category::Data => "not a value pullcheck can read",
        Category::Io => "the input could not be read",
    };
    format!("line {} column {}: {problem}", error.line(), error.column())
}

/// One YAML document's text, and where it starts in its file.
#[derive(Debug, Default, PartialEq, Eq)]
struct YamlDocument {
    /// 1-based, within the file: blank documents (before a leading `---`) count, as kubectl's.
    index: usize,
    text: String,
    /// The file's line the text starts on, 0-based.
    first_line: usize,
    /// Bytes of that line before the text (content on a `---` line).
    first_column: usize,
}

/// Splits a YAML stream at `---` document markers (and `...` ends) at the start of a line as
/// its lines are read, so that one document at a time is held and one broken document cannot
/// take the rest of the stream with it.
#[derive(Debug, Default)]
struct YamlSplitter {
    current: YamlDocument,
    lines: usize,
}

impl YamlSplitter {
    /// Lines read so far.
    fn lines_read(&self) -> usize {
        self.lines
    }

    /// Takes one line (with its line break); a marker line ends the document before it.
    fn push_line(&mut self, line: &str) -> Option<YamlDocument> {
        self.lines += 1;
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") || bare == "...";
        if !is_marker {
            self.current.text.push_str(line);
            return None;
        }
        let next = YamlDocument { index: self.current.index + 1, first_line: self.lines, ..YamlDocument::default() };
        let mut done = std::mem::replace(&mut self.current, next);
        if done.index == 0 {
            done.index = 1;
            self.current.index = 2;
        }
        if bare.starts_with("--- ") || bare.starts_with("---\t") {
            // Content on the marker line (`--- !tag`, `--- {a: 1}`) belongs to the next document.
            self.current.text.push_str(&line[3..]);
            self.current.first_line = self.lines - 1;
            self.current.first_column = 3;
        }
        Some(done)
    }

    /// The last document.
    fn finish(self) -> YamlDocument {
        let mut last = self.current;
        last.index = last.index.max(1);
        last
    }

    /// What was read, when it turns out not to be YAML.
    fn into_text(self) -> String {
        self.current.text
    }
}

/// Parses one document with limits that make a refusal cheap (`crate::yaml`).
fn parse_yaml_document(document: &YamlDocument, file: &str, inventory: &mut FileInventory) {
    if document.text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return;
    }
    match yaml::from_str::<Value>(&document.text) {
        Ok(value) => add_document(&value, file, document.index, inventory),
        Err(e) => inventory.errors.push(InputError {
            file: file.into(),
            document: Some(document.index),
            error: yaml_error(&e, document),
        }),
    }
}

/// `line L column C: <problem>` in file coordinates; never the text around it.
fn yaml_error(error: &serde_saphyr::Error, document: &YamlDocument) -> String {
    let mut described = yaml::describe(error);
    if let Some((line, column)) = &mut described.at {
        if *line == 1 {
            *column += document.first_column;
        }
        *line += document.first_line;
    }
    described.to_string()
}

fn add_document(value: &Value, file: &str, index: usize, inventory: &mut FileInventory) {
    let found = inventory.records.len();
    add_records(value, file, index, inventory);
    for record in inventory.records.split_off(found) {
        let record = record.interned(&mut inventory.names);
        inventory.records.push(record);
    }
}

fn add_records(value: &Value, file: &str, index: usize, inventory: &mut FileInventory) {
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
    fn errors_say_where_never_what() {
        let inv = parse(
            "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: one}]}\n---\nkind: Secret\nstringData:\n  user: admin-s3cr3t\n  password: pw-s3cr3t: broken\n  host: db-s3cr3t\n",
        );
        assert_eq!(images(&inv), vec!["Pod/a/c:one"]);
        let error = &inv.errors[0];
        assert_eq!(error.document, Some(2));
        assert!(error.error.starts_with("line 8 column "), "the file's line: {error}");
        let quoting = parse(
            "kind: Secret\nstringData:\n  key-s3cr3t: a\n  key-s3cr3t: b\n---\nkind: Secret\ndata: {n: 1e999}\n---\nkind: Secret\ndata: {n: *s3cr3t}\n---\n--- {kind: Secret, data: {a: \"s3cr3t\\q\"}}\n",
        );
        assert_eq!(quoting.errors.len(), 4, "{:?}", quoting.errors);
        for error in &quoting.errors {
            assert!(!error.error.contains("s3cr3t") && !error.error.contains("1e999"), "{error}");
            assert!(error.error.starts_with("line "), "{error}");
        }
        assert!(quoting.errors[3].error.starts_with("line 12 column 30:"), "on the marker line: {}", quoting.errors[3]);

        let mut json = FileInventory::default();
        parse_stream("{\"kind\": \"Secret\",\n \"data\": {\"a\": \"s3cr3t\" \"b\": 1}}", "s.json", &mut json);
        assert_eq!(json.errors[0].error, "line 2 column 25: expected `,` or `}`");
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut bomb = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (from, to) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!("{to}: &{to} [{}]\n", vec![format!("*{from}"); 9].join(", ")));
        }
        let inv = parse(&bomb);
        assert!(inv.errors[0].error.ends_with("aliases expand past pullcheck's limit"), "{}", inv.errors[0]);
        let reused = parse(
            "kind: Pod\nmetadata: {name: p}\nx: &env [{name: A, value: b}]\ny: [*env, *env, *env]\nspec: {containers: [{name: c, image: i}]}\n",
        );
        assert!(reused.errors.is_empty(), "a few aliases are fine: {:?}", reused.errors);
    }

    fn split(text: &str) -> Vec<(usize, String, usize, usize)> {
        let mut splitter = YamlSplitter::default();
        let mut documents: Vec<YamlDocument> =
            text.split_inclusive('\n').filter_map(|line| splitter.push_line(line)).collect();
        documents.push(splitter.finish());
        documents.into_iter().map(|d| (d.index, d.text, d.first_line, d.first_column)).collect()
    }

    #[test]
    fn document_markers() {
        assert_eq!(split("a: 1\n---\nb: 2\n"), [(1, "a: 1\n".into(), 0, 0), (2, "b: 2\n".into(), 2, 0)]);
        assert_eq!(split("--- {a: 1}\n"), [(1, String::new(), 0, 0), (2, " {a: 1}\n".into(), 0, 3)]);
        assert_eq!(split("x: |\n  ---\n"), [(1, "x: |\n  ---\n".into(), 0, 0)]);
        assert_eq!(
            split("a: 1\n...\n---\nb: 2"),
            [(1, "a: 1\n".into(), 0, 0), (2, String::new(), 2, 0), (3, "b: 2".into(), 3, 0)]
        );
    }
}
