//! `pullcheck check`: one pass — the workloads of manifests on disk or of a live cluster,
//! resolved to image keys, each key probed once, then a [`Report`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::credentials::{Credential, SourcedCredential, WorkloadCredentials, credential_name};
use crate::error::Warning;
use crate::inventory::keys::{ImageKey, ImageUse, Replacement, by_key, resolve};
use crate::inventory::running::{Digest, ObjectKey, OwnedBy, Running, drift, running_digests};
use crate::inventory::selection::Selection;
use crate::inventory::{ContainerRef, WorkloadRef};
use crate::platform::Platform;
use crate::registry::{ProbeResult, RegistryClient, State};
use crate::report::{ImageReport, RateLimitReport, ReplacementReport, Report, WorkloadUse};
use crate::sources::cluster::{ApiFailure, Connection, ListFailure, failure_lines, list_namespaces, list_workloads};
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
    /// A kind that cannot be listed is a warning and the check goes on with the rest, instead
    /// of failing the check (exit 2): a gate must not pass without having looked.
    pub allow_partial: bool,
    /// Finding no workload is an answer, instead of failing the check (exit 2): a wrong path
    /// or an empty render must not pass a gate.
    pub allow_empty: bool,
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
    let empty = records
        .is_empty()
        .then(|| no_workload_in_files(paths, inventory.files, inventory.documents, inventory.records.len()));
    let platforms: Arc<[Platform]> = Arc::from(settings.platforms.clone().unwrap_or_default());
    let uses = resolve(records, |_| None, client.config(), &selection.images, &platforms);
    let mut report = probe_uses(uses, client, settings, &Running::default()).await;
    report.input_errors = inventory.errors;
    report.errors.extend(empty.filter(|_| !settings.allow_empty));
    report
}

/// `check` on a cluster: list every kind (in `namespaces`, or all), read the pull secrets the
/// workloads name in their own namespaces, probe. A kind that could not be listed fails the
/// check unless `allow_partial`; so does finding no workload, unless `allow_empty`.
pub async fn check_cluster(
    cluster: &Connection,
    namespaces: Option<&[String]>,
    selection: &Selection,
    secret_ttl: Duration,
    client: &RegistryClient,
    settings: &CheckSettings,
) -> Report {
    let kube_client = &cluster.client;
    let snapshot = list_workloads(kube_client, namespaces, cluster.page_size).await;
    // Unreached, or the credentials refused: nodes and namespaces would fail the same way.
    let reached = snapshot.reached();
    let (platforms, platform_warning) = if reached {
        required_platforms(settings.platforms.as_deref(), kube_client).await
    } else {
        (settings.platforms.clone().unwrap_or_default(), None)
    };
    let mut errors = Vec::new();
    let labels = if selection.needs_namespace_labels() && reached {
        list_namespaces(kube_client).await.unwrap_or_else(|e| {
            // A selector that cannot be evaluated selects nothing: the check did not look.
            errors.push(format!("cannot list namespaces for --namespace-selector: {}", ApiFailure::of(&e)));
            BTreeMap::new()
        })
    } else {
        BTreeMap::new()
    };
    let records: Vec<_> =
        snapshot.records.iter().filter(|r| selection.admits(r, labels.get(r.workload.namespace.as_str()))).collect();
    let secrets = PullSecrets::new(kube_client.clone(), secret_ttl);
    let mut credentials: HashMap<&WorkloadRef, WorkloadCredentials> = HashMap::new();
    let mut others = snapshot.warnings.clone();
    for record in &records {
        let (found, problems) = secrets.for_workload_with_providers(record, client.config()).await;
        others.extend(problems.iter().map(|p| p.warning_for(&record.workload)));
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
    let owners: HashMap<ObjectKey, OwnedBy> = snapshot.owners.iter().copied().collect();
    let running = running_digests(&snapshot.pods, |owned| owners.get(&owned).copied());
    let mut report = probe_uses(uses, client, settings, &running).await;
    others.extend(platform_warning);

    let unlisted = failure_lines(&snapshot.failures, &cluster.server);
    let mut notes = Vec::new();
    if settings.allow_partial {
        notes.extend(unlisted);
    } else {
        errors.extend(unlisted);
    }
    // Kinds that could not be listed already say why nothing was found, unless they were let go.
    if records.is_empty() && !settings.allow_empty && (snapshot.failures.is_empty() || settings.allow_partial) {
        errors.push(no_workload_in_cluster(&cluster.server, namespaces, snapshot.records.len(), &snapshot.failures));
    }
    notes.extend(others.iter().map(ToString::to_string));
    let mut warnings: Vec<Warning> = snapshot.failures.iter().map(ListFailure::warning).collect();
    warnings.extend(others);
    report.errors = errors;
    report.warnings = warnings;
    report.notes = notes;
    report
}

/// `no workload found in deploy/, <stdin>: …`, saying what was read: files, documents, and
/// workloads left out by the selection.
pub fn no_workload_in_files(paths: &[PathBuf], files: usize, documents: usize, workloads: usize) -> String {
    let named: Vec<String> = paths
        .iter()
        .map(|p| if p.as_path() == Path::new("-") { "<stdin>".to_string() } else { p.display().to_string() })
        .collect();
    let read = match (files, documents, workloads) {
        (0, _, _) => "no manifest file (.yaml, .yml, .json) read".to_string(),
        (files, 0, _) => format!("{} read, no readable document in them", count(files, "file")),
        (files, documents, 0) => {
            format!("{} read, {}, none of them a workload", count(files, "file"), count(documents, "document"))
        }
        (files, _, workloads) => format!(
            "{} read, {}, none selected (scaled to zero or suspended: --include-disabled; --exclude-namespace)",
            count(files, "file"),
            count(workloads, "workload")
        ),
    };
    format!("no workload found in {}: {read}", named.join(", "))
}

/// `no workload found in namespace shop of https://…: no workload listed`.
pub fn no_workload_in_cluster(
    server: &str,
    namespaces: Option<&[String]>,
    listed: usize,
    failures: &[ListFailure],
) -> String {
    let scope = match namespaces {
        None => "any namespace".to_string(),
        Some([one]) => format!("namespace {one}"),
        Some(many) => format!("namespaces {}", many.join(", ")),
    };
    let mut unlisted: Vec<_> = failures.iter().map(|f| f.kind).collect();
    unlisted.sort();
    unlisted.dedup();
    let what = match (listed, unlisted.len()) {
        (0, 0) => "no workload listed".to_string(),
        (0, n) => format!("no workload listed ({} could not be listed)", count(n, "kind")),
        (listed, _) => format!(
            "{} listed, none selected (see --namespace-selector, --exclude-namespace, --include-disabled)",
            count(listed, "workload")
        ),
    };
    format!("no workload found in {scope} of {server}: {what}")
}

/// `1 file`, `2 files`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// What a report entry stands for: the reference as written, the credentials and the
/// platforms, and the credentials its replacement is probed with (when it has one).
type EntryKey<'a> = (&'a str, &'a [Credential], &'a [Platform], Option<&'a [Credential]>);

/// Probes every key once, and reports one entry per (reference as written, credential,
/// platforms), each container with what its pods run (`running`) and whether that drifted.
async fn probe_uses(
    uses: Vec<ImageUse>,
    client: &RegistryClient,
    settings: &CheckSettings,
    running: &Running,
) -> Report {
    // Each key probed once, its credentials named as its first use knows them.
    let mut keys: BTreeMap<&ImageKey, Vec<SourcedCredential>> =
        by_key(&uses).into_iter().map(|(key, users)| (key, users[0].chain())).collect();
    // And each replacement of an image on a deprecated registry: whether switching works today
    // (often the key of another use already).
    for replacement in uses.iter().filter_map(|u| u.replacement.as_deref()).filter(|r| !r.when_absent) {
        keys.entry(&replacement.key).or_insert_with(|| replacement.chain());
    }
    let keys: Vec<(ImageKey, Vec<SourcedCredential>)> = keys.into_iter().map(|(k, c)| (k.clone(), c)).collect();
    let mut results = probe_keys(keys, client, settings).await;
    // A moved repository's replacements only for the images that came back absent: one more
    // pass, never a request for an image that is still served (Docker Hub counts each).
    let second = replacements_wanted(&uses, |key| results.get(key).map(|r| r.state));
    if !second.is_empty() {
        results.extend(probe_keys(second, client, settings).await);
    }
    // One entry per key as written: workloads whose nodes differ in platform get their own
    // answers, as their credentials do (for the replacement too).
    let mut entries: BTreeMap<EntryKey, Vec<&ImageUse>> = BTreeMap::new();
    for image_use in &uses {
        let (credentials, platforms) =
            image_use.key.as_ref().map_or((&[][..], &[][..]), |k| (k.credentials.as_slice(), &*k.platforms));
        let replacement = image_use.replacement.as_ref().map(|r| r.key.credentials.as_slice());
        entries.entry((image_use.written.as_str(), credentials, platforms, replacement)).or_default().push(image_use);
    }
    let images = entries
        .into_iter()
        .map(|((written, _, _, _), users)| {
            let current = users[0].key.as_ref().ok().and_then(|k| results.get(k)).and_then(|r| r.digest.as_deref());
            // A digest-pinned reference cannot drift: the tag is not what pods run.
            let pinned = users[0].canonical().is_some_and(|i| i.digest().is_some());
            let mut workloads: Vec<WorkloadUse> = users
                .iter()
                .map(|u| {
                    let running_digests = running.of(&u.user);
                    let drift = if pinned { None } else { drift(&running_digests, current.and_then(Digest::parse)) };
                    WorkloadUse { user: u.user.clone(), running_digests, drift }
                })
                .collect();
            workloads.sort_by(|a, b| as_written_order(&a.user).cmp(&as_written_order(&b.user)));
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
                    replacement: None,
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
                        replacement: users[0].replacement.as_ref().filter(|r| shown(r, result)).map(|r| {
                            let result = results.get(&r.key);
                            ReplacementReport {
                                image: r.key.image.to_string(),
                                moved: r.when_absent,
                                state: result.map_or(State::Pending, |r| r.state),
                                digest: result.and_then(|r| r.digest.clone()),
                                error: result.and_then(|r| r.error.clone()),
                            }
                        }),
                    }
                }
            }
        })
        .collect();
    let mut report = Report::new(images);
    report.summary.rate_limits = RateLimitReport::lowest(results.values().filter_map(|r| {
        let (host, budget) = r.rate_limit.as_ref()?;
        Some((host.as_str(), credential_name(r.credential.as_ref()), *budget))
    }));
    report
}

/// Whether a use's replacement stands in for it: always on a deprecated registry, only once
/// the image came back `absent` in a moved repository.
fn shown(replacement: &Replacement, own: Option<&ProbeResult>) -> bool {
    !replacement.when_absent || own.is_some_and(|r| r.state == State::Absent)
}

/// The moved repositories' replacements to probe once the uses' own keys are answered: those
/// of images that came back `absent`, each once, none already answered.
fn replacements_wanted(
    uses: &[ImageUse],
    state_of: impl Fn(&ImageKey) -> Option<State>,
) -> Vec<(ImageKey, Vec<SourcedCredential>)> {
    let mut wanted: BTreeMap<&ImageKey, Vec<SourcedCredential>> = BTreeMap::new();
    for image_use in uses {
        let (Ok(key), Some(replacement)) = (&image_use.key, image_use.replacement.as_deref()) else { continue };
        if replacement.when_absent && state_of(key) == Some(State::Absent) && state_of(&replacement.key).is_none() {
            wanted.entry(&replacement.key).or_insert_with(|| replacement.chain());
        }
    }
    wanted.into_iter().map(|(k, c)| (k.clone(), c)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryConfig;
    use crate::inventory::WorkloadKind;
    use crate::inventory::selection::ImageFilter;

    #[test]
    fn moved_repositories_replacements_are_probed_only_for_absent_images() {
        let web = crate::inventory::fixtures::deployment(
            "ns",
            "web",
            &["bitnami/redis:1", "bitnami/nginx:1", "k8s.gcr.io/pause:3.9", "bitnami/kafka:1", "bitnami/etcd:1"],
        );
        let api = crate::inventory::fixtures::deployment("ns", "api", &["bitnami/redis:1"]);
        let uses = resolve(
            [&web, &api],
            |_| None,
            &RegistryConfig::default(),
            &ImageFilter::default(),
            &Arc::from(Vec::new()),
        );
        let state_of = |key: &ImageKey| match key.image.to_string().as_str() {
            "docker.io/bitnami/redis:1" | "docker.io/bitnami/kafka:1" | "k8s.gcr.io/pause:3.9" => Some(State::Absent),
            "docker.io/bitnami/nginx:1" => Some(State::Available),
            // Answered in the first pass already (another container runs it).
            "docker.io/bitnamilegacy/kafka:1" => Some(State::Available),
            // etcd: not answered (the first pass was cut short): nothing known, nothing more asked.
            _ => None,
        };
        let wanted: Vec<String> =
            replacements_wanted(&uses, state_of).into_iter().map(|(k, _)| k.image.to_string()).collect();
        // Once for two containers; not nginx's (served), not kafka's (known), not pause's (a
        // deprecated registry's replacement is in the first pass).
        assert_eq!(wanted, ["docker.io/bitnamilegacy/redis:1"]);

        let redis = uses[0].replacement.as_deref().expect("bitnami moved");
        let pause = uses[2].replacement.as_deref().expect("k8s.gcr.io is deprecated");
        let answer = |state| ProbeResult::failed("docker.io", state, "test");
        assert!(shown(redis, Some(&answer(State::Absent))));
        for not_absent in [State::Available, State::AuthorizationFailure, State::RateLimited, State::PlatformMissing] {
            assert!(!shown(redis, Some(&answer(not_absent))), "{not_absent}");
        }
        assert!(!shown(redis, None));
        assert!(shown(pause, Some(&answer(State::Available))), "a deprecated registry's always");
    }

    #[test]
    fn nothing_found_says_what_was_read() {
        let paths = [PathBuf::from("deploy/"), PathBuf::from("-")];
        assert_eq!(
            no_workload_in_files(&paths, 0, 0, 0),
            "no workload found in deploy/, <stdin>: no manifest file (.yaml, .yml, .json) read"
        );
        assert_eq!(
            no_workload_in_files(&paths[1..], 1, 0, 0),
            "no workload found in <stdin>: 1 file read, no readable document in them"
        );
        assert_eq!(
            no_workload_in_files(&paths[..1], 3, 7, 0),
            "no workload found in deploy/: 3 files read, 7 documents, none of them a workload"
        );
        assert!(no_workload_in_files(&paths[..1], 1, 1, 1).contains("1 workload, none selected"));

        let server = "https://127.0.0.1:6443";
        assert_eq!(
            no_workload_in_cluster(server, Some(&["shop".to_string()]), 0, &[]),
            "no workload found in namespace shop of https://127.0.0.1:6443: no workload listed"
        );
        let failures = [ListFailure { kind: WorkloadKind::Pod, namespace: None, cause: ApiFailure::Forbidden }];
        assert_eq!(
            no_workload_in_cluster(server, None, 0, &failures),
            "no workload found in any namespace of https://127.0.0.1:6443: no workload listed (1 kind could not be listed)"
        );
        assert!(no_workload_in_cluster(server, Some(&["a".into(), "b".into()]), 2, &[]).starts_with(
            "no workload found in namespaces a, b of https://127.0.0.1:6443: 2 workloads listed, none selected"
        ));
    }
}
