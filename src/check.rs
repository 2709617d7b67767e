//! `pullcheck check`: one pass — every image of a set of workloads probed once per key, then a
//! report as a table or the JSON document of DESIGN.md.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use futures_util::StreamExt;
use regex::Regex;
use serde::Serialize;

use crate::config::RegistryConfig;
use crate::error::{Error, Result};
use crate::image::ImageRef;
use crate::inventory::files::InputError;
use crate::inventory::secrets::PullSecrets;
use crate::inventory::{ContainerSpec, WorkloadRecord, WorkloadRef};
use crate::registry::{Credential, Platform, ProbeResult, RegistryClient, State};

/// `--ignore-images` / `--allow-images`, matched against the reference as written and its
/// canonical form: an image is checked when no ignore pattern matches and, if allow patterns
/// are given, one of them does.
#[derive(Clone, Debug, Default)]
pub struct ImageFilter {
    ignore: Vec<Regex>,
    allow: Vec<Regex>,
}

impl ImageFilter {
    pub fn new(ignore: &[String], allow: &[String]) -> Result<Self> {
        let compile = |patterns: &[String]| -> Result<Vec<Regex>> {
            patterns
                .iter()
                .map(|p| Regex::new(p).map_err(|source| Error::Regex { pattern: p.clone(), source }))
                .collect()
        };
        Ok(Self { ignore: compile(ignore)?, allow: compile(allow)? })
    }

    pub fn admits(&self, as_written: &str, canonical: Option<&str>) -> bool {
        let matches = |r: &Regex| r.is_match(as_written) || canonical.is_some_and(|c| r.is_match(c));
        !self.ignore.iter().any(matches) && (self.allow.is_empty() || self.allow.iter().any(matches))
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadUse {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub container: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    pub image: String,
    pub canonical: Option<String>,
    pub state: State,
    pub digest: Option<String>,
    pub registry: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub workloads: Vec<WorkloadUse>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub images: Vec<ImageReport>,
    pub summary: BTreeMap<State, usize>,
    /// Inputs that could not be read; present only when there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub input_errors: Vec<InputError>,
    /// What limits the answer without stopping it: kinds RBAC hides, pull secrets missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A container's image with the credential kubelet would use for it.
pub struct Target<'a> {
    pub workload: &'a WorkloadRef,
    pub container: &'a ContainerSpec,
    pub credential: Option<Credential>,
}

impl<'a> Target<'a> {
    /// Every container of the records with the credential kubelet would use for its image,
    /// from the workload's own namespace; problems finding credentials are returned as warnings.
    pub async fn with_pull_secrets(
        records: &'a [WorkloadRecord],
        secrets: &PullSecrets,
        config: &RegistryConfig,
    ) -> (Vec<Target<'a>>, Vec<String>) {
        let mut targets = Vec::new();
        let mut warnings = Vec::new();
        for record in records {
            let credentials = secrets.for_workload(record).await;
            let w = &record.workload;
            warnings.extend(credentials.problems.iter().map(|p| format!("{} {}/{}: {p}", w.kind, w.namespace, w.name)));
            for container in &record.containers {
                let credential =
                    config.parse_image(&container.image).ok().and_then(|image| credentials.lookup(&image).cloned());
                targets.push(Target { workload: w, container, credential });
            }
        }
        (targets, warnings)
    }

    /// Every container of the records, with no credential of their own (configured ones apply).
    pub fn anonymous(records: &'a [WorkloadRecord]) -> Vec<Target<'a>> {
        records
            .iter()
            .flat_map(|r| r.containers.iter().map(|c| Target { workload: &r.workload, container: c, credential: None }))
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Probes in flight at once, over all registries (each registry has its own limit too).
    pub concurrency: usize,
    pub progress: bool,
    /// Platforms every image index must cover (`platform_missing` otherwise).
    pub platforms: Vec<Platform>,
}

/// Probes every image once per (canonical reference, credential) and reports per image as written.
pub async fn run_check(
    targets: Vec<Target<'_>>,
    filter: &ImageFilter,
    client: &RegistryClient,
    options: CheckOptions,
) -> Report {
    // Entries: one per (reference as written, credential); probes: one per (canonical, credential).
    let mut entries: BTreeMap<(String, Option<Credential>), Vec<WorkloadUse>> = BTreeMap::new();
    for target in targets {
        let use_ = WorkloadUse {
            kind: target.workload.kind.as_str().into(),
            namespace: target.workload.namespace.clone(),
            name: target.workload.name.clone(),
            container: target.container.name.clone(),
        };
        entries.entry((target.container.image.clone(), target.credential)).or_default().push(use_);
    }
    let parsed: Vec<_> = entries
        .into_iter()
        .map(|((image, credential), workloads)| {
            let reference = client.config().parse_image(&image);
            (image, credential, reference, workloads)
        })
        .filter(|(image, _, reference, _)| {
            filter.admits(image, reference.as_ref().ok().map(|r| r.to_string()).as_deref())
        })
        .collect();
    let mut keys: Vec<(ImageRef, Option<Credential>)> =
        parsed.iter().filter_map(|(_, cred, r, _)| r.as_ref().ok().map(|r| (r.clone(), cred.clone()))).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys.dedup();

    let total = keys.len();
    let mut done = 0;
    let mut results: HashMap<(ImageRef, Option<Credential>), ProbeResult> = HashMap::with_capacity(total);
    let platforms = &options.platforms;
    let mut probes = futures_util::stream::iter(keys)
        .map(|(image, credential)| async move {
            let result = client.probe_for(&image, credential.as_ref(), platforms, 0).await;
            ((image, credential), result)
        })
        .buffer_unordered(options.concurrency.max(1));
    while let Some((key, result)) = probes.next().await {
        done += 1;
        if options.progress {
            eprint!("\rprobed {done}/{total} images");
            let _ = std::io::stderr().flush();
        }
        results.insert(key, result);
    }
    if options.progress && total > 0 {
        eprintln!();
    }

    let mut images: Vec<ImageReport> = parsed
        .into_iter()
        .map(|(image, credential, reference, mut workloads)| {
            workloads.sort();
            workloads.dedup();
            match reference {
                Err(e) => ImageReport {
                    image,
                    canonical: None,
                    state: State::BadImageFormat,
                    digest: None,
                    registry: None,
                    duration_ms: 0,
                    error: Some(e.to_string()),
                    workloads,
                },
                Ok(reference) => {
                    let result = results.get(&(reference.clone(), credential));
                    ImageReport {
                        canonical: Some(reference.to_string()),
                        state: result.map_or(State::Pending, |r| r.state),
                        digest: result.and_then(|r| r.digest.clone()),
                        registry: Some(result.map_or_else(|| reference.registry().to_string(), |r| r.registry.clone())),
                        duration_ms: result.map_or(0, |r| r.duration.as_millis() as u64),
                        error: result.and_then(|r| r.error.clone()),
                        image,
                        workloads,
                    }
                }
            }
        })
        .collect();
    images.sort_by(|a, b| a.state.cmp(&b.state).then_with(|| a.image.cmp(&b.image)));
    let mut summary = BTreeMap::new();
    for image in &images {
        *summary.entry(image.state).or_insert(0) += 1;
    }
    Report { images, summary, input_errors: Vec::new(), warnings: Vec::new() }
}

impl Report {
    /// 0 every image available, 1 some image not, 2 some input could not be read.
    pub fn exit_code(&self) -> i32 {
        if !self.input_errors.is_empty() {
            2
        } else if self.images.iter().any(|i| i.state != State::Available) {
            1
        } else {
            0
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Problems first; one line per image, with where it is used and why it failed.
    pub fn to_table(&self) -> String {
        let rows: Vec<[String; 4]> =
            self.images
                .iter()
                .map(|i| {
                    let first = i.workloads.first().map_or_else(String::new, |w| {
                        format!("{} {}/{} ({})", w.kind, w.namespace, w.name, w.container)
                    });
                    let more =
                        if i.workloads.len() > 1 { format!(" +{} more", i.workloads.len() - 1) } else { String::new() };
                    let detail = match (&i.error, &i.digest) {
                        (Some(e), _) => e.clone(),
                        (None, Some(d)) => d.clone(),
                        (None, None) => String::new(),
                    };
                    [i.state.to_string(), i.canonical.clone().unwrap_or_else(|| i.image.clone()), first + &more, detail]
                })
                .collect();
        let header = ["STATE", "IMAGE", "USED BY", "DETAIL"].map(String::from);
        let mut widths = [0usize; 3];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            for (cell, w) in row.iter().zip(widths) {
                out.push_str(&format!("{cell:<w$}  "));
            }
            out.push_str(&row[3]);
            out.push('\n');
        }
        let counts: Vec<String> = self.summary.iter().map(|(s, n)| format!("{n} {s}")).collect();
        out.push_str(&format!("\n{} images: {}\n", self.images.len(), counts.join(", ")));
        for e in &self.input_errors {
            out.push_str(&format!("input error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = ImageFilter::new(&["^docker.io/library/".into()], &[]).expect("valid");
        assert!(!f.admits("nginx", Some("docker.io/library/nginx:latest")));
        assert!(f.admits("quay.io/a/b", Some("quay.io/a/b:latest")));
        let f = ImageFilter::new(&[], &["quay\\.io".into()]).expect("valid");
        assert!(f.admits("quay.io/a/b", None));
        assert!(!f.admits("nginx", Some("docker.io/library/nginx:latest")));
        assert!(matches!(ImageFilter::new(&["(".into()], &[]), Err(Error::Regex { .. })));
    }
}
