//! `pullcheck check`: one pass — the workloads of manifests on disk or of a live cluster,
//! resolved to image keys, each key probed once, then a [`Report`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::credentials::{Credential, SourcedCredential, WorkloadCredentials};
use crate::error::Result;
use crate::inventory::keys::{ImageKey, ImageUse, by_key, resolve};
use crate::inventory::selection::Selection;
use crate::inventory::{ContainerRef, WorkloadRef};
use crate::platform::Platform;
use crate::registry::{ProbeResult, RegistryClient, State};
use crate::report::{ImageReport, Report};
use crate::sources::cluster::{list_namespaces, list_workloads};
use crate::sources::manifests::load_paths;
use crate::sources::nodes::required_platforms;
use crate::sources::secrets::PullSecrets;

#[derive(Clone, Debug)]
pub struct CheckSettings {
    /// Probes in flight at once, over all registries (each registry has its own limit too).
    pub concurrency: usize,
    /// A progress line on stderr.
    pub progress: bool,
    /// Platforms every image index must cover; `None`: in a cluster, the nodes' platforms;
    /// for manifests, none.
    pub platforms: Option<Vec<Platform>>,
}

/// `check -f`: the workloads of manifest files, directories or stdin (`-`).
pub async fn check_files(
    paths: &[PathBuf],
    selection: &Selection,
    client: &RegistryClient,
    settings: &CheckSettings,
) -> Report {
    let inventory = load_paths(paths);
    let records: Vec<_> = inventory.records.iter().filter(|r| selection.admits(r, None)).collect();
    let platforms: Arc<[Platform]> = Arc::from(settings.platforms.clone().unwrap_or_default());
    let uses = resolve(records, |_| None, client.config(), &selection.images, &platforms);
    let mut report = probe_uses(uses, client, settings).await;
    report.input_errors = inventory.errors;
    report
}

/// `check` on a cluster: list every kind (in `namespaces`, or all), read the pull secrets the
/// workloads name in their own namespaces, probe.
pub async fn check_cluster(
    kube_client: &kube::Client,
    namespaces: Option<&[String]>,
    selection: &Selection,
    secret_ttl: Duration,
    client: &RegistryClient,
    settings: &CheckSettings,
) -> Result<Report> {
    let (platforms, platform_warning) = required_platforms(settings.platforms.as_deref(), kube_client).await;
    let snapshot = list_workloads(kube_client, namespaces).await;
    let labels = if selection.needs_namespace_labels() { list_namespaces(kube_client).await? } else { BTreeMap::new() };
    let records: Vec<_> =
        snapshot.records.iter().filter(|r| selection.admits(r, labels.get(&r.workload.namespace))).collect();
    let secrets = PullSecrets::new(kube_client.clone(), secret_ttl);
    let mut credentials: HashMap<&WorkloadRef, WorkloadCredentials> = HashMap::new();
    let mut warnings = snapshot.warnings.clone();
    for record in &records {
        let (found, problems) = secrets.for_workload(record).await;
        warnings.extend(problems.iter().map(|p| p.warning_for(&record.workload)));
        credentials.insert(&record.workload, found);
    }
    let platforms: Arc<[Platform]> = Arc::from(platforms);
    let uses = resolve(
        records.iter().copied(),
        |r| credentials.get(&r.workload),
        client.config(),
        &selection.images,
        &platforms,
    );
    let mut report = probe_uses(uses, client, settings).await;
    warnings.extend(platform_warning);
    report.warnings = warnings;
    Ok(report)
}

/// What a report entry stands for: the reference as written, the credentials and the platforms.
type EntryKey<'a> = (&'a str, &'a [Credential], &'a [Platform]);

/// Probes every key once, and reports one entry per (reference as written, credential, platforms).
async fn probe_uses(uses: Vec<ImageUse>, client: &RegistryClient, settings: &CheckSettings) -> Report {
    // Each key probed once, its credentials named as its first use knows them.
    let keys: Vec<(ImageKey, Vec<SourcedCredential>)> =
        by_key(&uses).into_iter().map(|(key, users)| (key.clone(), users[0].chain())).collect();
    let results = probe_keys(keys, client, settings).await;
    // One entry per key as written: workloads whose nodes differ in platform get their own
    // answers, as their credentials do.
    let mut entries: BTreeMap<EntryKey, Vec<&ImageUse>> = BTreeMap::new();
    for image_use in &uses {
        let (credentials, platforms) =
            image_use.key.as_ref().map_or((&[][..], &[][..]), |k| (k.credentials.as_slice(), &*k.platforms));
        entries.entry((image_use.written.as_str(), credentials, platforms)).or_default().push(image_use);
    }
    let images = entries
        .into_iter()
        .map(|((written, _, _), users)| {
            let mut workloads: Vec<_> = users.iter().map(|u| u.user.clone()).collect();
            workloads.sort_by(|a, b| as_written_order(a).cmp(&as_written_order(b)));
            workloads.dedup();
            let image = written.to_string();
            match &users[0].key {
                Err(e) => ImageReport {
                    image,
                    canonical: None,
                    state: State::BadImageFormat,
                    digest: None,
                    registry: None,
                    duration_ms: 0,
                    error: Some(e.to_string()),
                    credential: None,
                    workloads,
                },
                Ok(key) => {
                    let result = results.get(key);
                    ImageReport {
                        canonical: Some(key.image.to_string()),
                        state: result.map_or(State::Pending, |r| r.state),
                        digest: result.and_then(|r| r.digest.clone()),
                        registry: Some(result.map_or_else(|| key.registry().to_string(), |r| r.registry.clone())),
                        duration_ms: result.map_or(0, |r| u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX)),
                        error: result.and_then(|r| r.error.clone()),
                        // Named as this entry's workloads name it: their own secrets.
                        credential: result
                            .and_then(|r| r.credential_index.and_then(|i| users[0].source(i)).or(r.credential.as_ref()))
                            .map(ToString::to_string),
                        image,
                        workloads,
                    }
                }
            }
        })
        .collect();
    Report::new(images)
}

async fn probe_keys(
    keys: Vec<(ImageKey, Vec<SourcedCredential>)>,
    client: &RegistryClient,
    settings: &CheckSettings,
) -> HashMap<ImageKey, ProbeResult> {
    let total = keys.len();
    let mut results = HashMap::with_capacity(total);
    let mut probes = futures_util::stream::iter(keys)
        .map(|(key, chain)| async move {
            let result = client.probe_for(&key.image, &chain, &key.platforms, 0).await;
            (key, result)
        })
        .buffer_unordered(settings.concurrency.max(1));
    while let Some((key, result)) = probes.next().await {
        results.insert(key, result);
        if settings.progress {
            eprint!("\rprobed {}/{total} images", results.len());
            let _ = std::io::stderr().flush();
        }
    }
    if settings.progress && total > 0 {
        eprintln!();
    }
    results
}

/// By kind name as written in manifests (`CronJob` before `Deployment`), then namespace, name
/// and container.
fn as_written_order(c: &ContainerRef) -> (&str, &str, &str, &str) {
    (c.workload.kind.as_str(), &c.workload.namespace, &c.workload.name, &c.container)
}
