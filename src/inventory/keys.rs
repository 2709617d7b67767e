//! Records, the credentials their namespaces give them, the registry config and the selection,
//! resolved to image keys: the one place where `check` and `run` decide what is probed, with
//! which credential, on behalf of which containers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::selection::ImageFilter;
use super::{ContainerRef, ContainerSpec, WorkloadRecord, WorkloadRef};
use crate::config::RegistryConfig;
use crate::config::deprecated::Condition;
use crate::credentials::{Credential, CredentialSource, SourcedCredential, WorkloadCredentials};
use crate::image::{ImageRef, ImageRefError};
use crate::name::{Interner, Name};
use crate::platform::Platform;

/// What one probe answers for: a canonical reference and the workload credentials kubelet
/// would try for it, in its order. Two namespaces with different credentials for one image are
/// two keys; the same credentials under other secret names are one (one probe per credential).
/// Shown as the reference alone: a key never prints its credentials. Shared, not copied:
/// every container of the key, the schedule and the states hold the same one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey(Arc<KeyParts>);

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyParts {
    pub image: ImageRef,
    pub credentials: Vec<Credential>,
    /// The platforms its workloads' nodes have: an index must cover each, a single-platform
    /// image must be one of them. Shared by every key of unconstrained workloads.
    pub platforms: Arc<[Platform]>,
}

impl std::ops::Deref for ImageKey {
    type Target = KeyParts;
    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ImageKey {
    /// Which shared key this is: equal while both are held only for the same key. A key's
    /// users hold the tracked key itself, so a lookup by identity finds its answer without
    /// hashing its reference, credentials and platforms.
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    pub fn new(image: ImageRef, credentials: Vec<Credential>, platforms: Arc<[Platform]>) -> Self {
        ImageKey(Arc::new(KeyParts { image, credentials, platforms }))
    }

    /// The very same key, not an equal copy.
    pub fn is_same(&self, other: &ImageKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The registry as named in the reference: the unit of the scheduler's per-registry budgets.
    pub fn registry(&self) -> &str {
        self.image.registry()
    }
}

impl fmt::Display for ImageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.image.fmt(f)
    }
}

/// One container's use of an image: a per-container series, a "used by" line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUse {
    pub user: ContainerRef,
    /// Which of its record's containers (`WorkloadRecord::containers`) it is.
    pub spec: usize,
    /// The reference as written in the manifest.
    pub written: Name,
    /// The key probed for it, or why the reference is `bad_image_format` (never probed).
    pub key: Result<ImageKey, ImageRefError>,
    /// Where each of the key's credentials comes from for this use (its own secret names);
    /// shared by the uses that name them alike (a namespace's workloads and their secrets).
    pub sources: Sources,
    /// When the image's registry is deprecated (`config::deprecated`): the same image under its
    /// replacement. Boxed: most uses have none.
    pub replacement: Option<Box<Replacement>>,
}

/// The image of a use under the registry that replaced its deprecated one: what `check` probes
/// to tell whether switching works today.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The replacement reference, the same platforms, and the workload's credentials for the
    /// replacement registry — never the deprecated registry's: kubelet sends a secret only to
    /// the registry it names, and so does pullcheck.
    pub key: ImageKey,
    pub sources: Sources,
    /// A moved repository's (`Condition::WhenAbsent`): it stands in for the image only while
    /// the image is `absent` — not flagged, and not probed, while the image can be pulled.
    pub when_absent: bool,
}

impl Replacement {
    /// Its credentials named as the use knows them, for the probe.
    pub fn chain(&self) -> Vec<SourcedCredential> {
        named(&self.key.credentials, &self.sources)
    }
}

fn named(credentials: &[Credential], sources: &[CredentialSource]) -> Vec<SourcedCredential> {
    credentials
        .iter()
        .zip(sources)
        .map(|(credential, source)| SourcedCredential { source: source.clone(), credential: credential.clone() })
        .collect()
}

/// A workload's credentials for an image, in kubelet's order, split into what is probed and
/// what it is called.
fn credentials_for(own: Option<&WorkloadCredentials>, image: &ImageRef) -> (Vec<Credential>, Vec<CredentialSource>) {
    own.map(|c| c.chain(image)).unwrap_or_default().into_iter().map(|c| (c.credential, c.source)).unzip()
}

impl ImageUse {
    /// The key's credentials named as this use knows them, for the probe.
    pub fn chain(&self) -> Vec<SourcedCredential> {
        let credentials = self.key.as_ref().map_or(&[][..], |k| k.credentials.as_slice());
        named(credentials, &self.sources)
    }

    /// The name of the credential at `index` of the probed chain, as this use knows it.
    pub fn source(&self, index: usize) -> Option<&CredentialSource> {
        self.sources.get(index)
    }

    /// Its replacement is a moved repository's (`Replacement::when_absent`).
    pub fn replacement_when_absent(&self) -> bool {
        self.replacement.as_ref().is_some_and(|r| r.when_absent)
    }

    /// The canonical reference, when the written one parses.
    pub fn canonical(&self) -> Option<&ImageRef> {
        self.key.as_ref().ok().map(|k| &k.image)
    }
}

/// One workload's series, as `run` keeps them: the record they were resolved from (the
/// store's, shared: its identity, container names and images are not copied) and each
/// container's key as the key table holds it (shared too). Series attributes are built from
/// it at export; between exports this is all a series costs.
#[derive(Debug)]
pub struct WorkloadSeries {
    record: Arc<WorkloadRecord>,
    containers: Box<[ContainerSeries]>,
    /// The last reset of the tracked set that named this workload (`Tracked`): what it keeps
    /// at a reset's end, where a set of every workload the reset had not named yet was the
    /// peak of the heap at 52,000 workloads. Free: it fills the padding of the allocation's
    /// size class (40 bytes with the `Arc`'s counts, 48 either way).
    reset: AtomicU32,
}

// The reset mark is free only while the series fit 32 bytes (48 with the `Arc`'s counts).
const _: () = assert!(std::mem::size_of::<WorkloadSeries>() <= 32);

impl super::ForWorkload for WorkloadSeries {
    fn workload(&self) -> &WorkloadRef {
        WorkloadSeries::workload(self)
    }
}

/// One container's keys, in its workload's series.
#[derive(Debug)]
pub struct ContainerSeries {
    /// Which of the record's containers (`u32`: room for `replacement_when_absent` in what
    /// `usize` alone took, docs/architecture.md "Footprint").
    spec: u32,
    /// The replacement is a moved repository's (`Replacement::when_absent`).
    pub replacement_when_absent: bool,
    /// `None`: the reference does not parse (`bad_image_format`), never probed.
    pub key: Option<ImageKey>,
    /// On a deprecated registry: the same image under its replacement, probed too; in a moved
    /// repository: the same, probed only while `key` is known `absent`.
    pub replacement: Option<ImageKey>,
}

impl ContainerSeries {
    /// Whether the image counts as on a deprecated registry (`pullcheck.registry.deprecated`).
    pub fn deprecated(&self) -> bool {
        self.replacement.is_some() && !self.replacement_when_absent
    }
}

impl WorkloadSeries {
    /// The series of `record`'s containers that `uses` (resolved from it) name, each with
    /// the key `hold` gives for the use's (the table's own, so that one key is one
    /// allocation). A use naming no container of the record is left out.
    pub fn new(
        record: Arc<WorkloadRecord>,
        uses: &[ImageUse],
        mut hold: impl FnMut(&ImageUse) -> (Option<ImageKey>, Option<ImageKey>),
    ) -> Self {
        let containers = of_record(&record, uses)
            .filter_map(|u| {
                let spec = u32::try_from(u.spec).ok()?;
                let replacement_when_absent = u.replacement_when_absent();
                let (key, replacement) = hold(u);
                Some(ContainerSeries { spec, replacement_when_absent, key, replacement })
            })
            .collect();
        WorkloadSeries { record, containers, reset: AtomicU32::new(0) }
    }

    /// Whether `new` would build these very series from `record` and `uses`: the same record
    /// (not an equal copy) and, container by container, equal keys. A reset that resolves a
    /// workload to what is held then keeps it, instead of building all its series again.
    pub fn is_built_from(&self, record: &Arc<WorkloadRecord>, uses: &[ImageUse]) -> bool {
        let mut built = of_record(record, uses);
        Arc::ptr_eq(&self.record, record)
            && self.containers.iter().all(|container| {
                built.next().is_some_and(|u| {
                    container.spec as usize == u.spec
                        && container.replacement_when_absent == u.replacement_when_absent()
                        && container.key.as_ref() == u.key.as_ref().ok()
                        && container.replacement.as_ref() == u.replacement.as_ref().map(|r| &r.key)
                })
            })
            && built.next().is_none()
    }

    /// Which reset last named it (`Tracked`).
    pub fn reset(&self) -> u32 {
        self.reset.load(Ordering::Relaxed)
    }

    pub fn mark_reset(&self, reset: u32) {
        self.reset.store(reset, Ordering::Relaxed);
    }

    pub fn workload(&self) -> &WorkloadRef {
        &self.record.workload
    }

    pub fn record(&self) -> &Arc<WorkloadRecord> {
        &self.record
    }

    pub fn containers(&self) -> &[ContainerSeries] {
        &self.containers
    }
}

/// The uses that name a container of `record`: the ones its series are built from.
fn of_record<'a>(record: &WorkloadRecord, uses: &'a [ImageUse]) -> impl Iterator<Item = &'a ImageUse> {
    let containers = record.containers.len();
    uses.iter().filter(move |u| u.spec < containers)
}

/// One container's series: its workload's series and which container. Cheap to clone;
/// compares and sorts as the container it is for (`Kind namespace/name (container)`).
#[derive(Clone, Debug)]
pub struct Series {
    workload: Arc<WorkloadSeries>,
    index: usize,
}

impl PartialEq for Series {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Series {}

impl PartialOrd for Series {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Series {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.identity().cmp(&other.identity())
    }
}

impl Series {
    /// The `index`th container of `workload`; `None` past its containers.
    pub fn new(workload: Arc<WorkloadSeries>, index: usize) -> Option<Self> {
        (index < workload.containers.len()).then_some(Series { workload, index })
    }

    pub fn workload(&self) -> &WorkloadRef {
        self.workload.workload()
    }

    /// Its workload's series and which container, for a holder that keeps them flat.
    pub fn into_parts(self) -> (Arc<WorkloadSeries>, usize) {
        (self.workload, self.index)
    }

    pub fn container(&self) -> &ContainerSeries {
        // In range: checked when made.
        &self.workload.containers[self.index]
    }

    /// The container of the record: its name and the image as written.
    pub fn spec(&self) -> &ContainerSpec {
        // In range: checked when the workload's series were made.
        &self.workload.record.containers[self.container().spec as usize]
    }

    /// Who this series is for.
    pub fn user(&self) -> ContainerRef {
        ContainerRef { workload: self.workload().clone(), container: self.spec().name.clone() }
    }

    fn identity(&self) -> (&WorkloadRef, &Name) {
        (self.workload(), &self.spec().name)
    }
}

/// Every container of the records whose image the filter admits, in record order, each with
/// its key: every entry of the workload's pull secrets for the image's registry, in kubelet's
/// order, and the node platforms (`platforms`) the workload can be scheduled on.
/// `credentials` gives a record's own credentials (`None`: it brings none, as for manifests
/// on disk).
pub fn resolve<'a>(
    records: impl IntoIterator<Item = &'a WorkloadRecord>,
    credentials: impl Fn(&WorkloadRecord) -> Option<&'a WorkloadCredentials>,
    config: &RegistryConfig,
    filter: &ImageFilter,
    platforms: &Arc<[Platform]>,
) -> Vec<ImageUse> {
    let mut uses = Vec::new();
    let mut anonymous: HashMap<(Name, Arc<[Platform]>), AnonymousKey> = HashMap::new();
    // Equal keys held once: the workloads of a namespace that share a pull secret share their
    // keys, where each use held a copy of the reference and the credentials (`check -A` at
    // 50,000 workloads: docs/architecture.md, "At Kubernetes' limits").
    let mut keys: Interner<KeyParts> = Interner::default();
    let mut key_of = |image: ImageRef, credentials: Vec<Credential>, platforms: Arc<[Platform]>| {
        ImageKey(keys.share_arc(&ImageKey::new(image, credentials, platforms).0))
    };
    // And equal lists of where credentials come from: one per use was 64 bytes or more each.
    let mut held_sources: Interner<[CredentialSource]> = Interner::default();
    let mut sources_of = |sources: Vec<CredentialSource>| held_sources.share_arc(&Sources::from(sources));
    for record in records {
        let own = credentials(record);
        let schedulable = match &record.platforms {
            Some(constraints) => Arc::from(constraints.narrow(platforms)),
            None => platforms.clone(),
        };
        for (spec, container) in record.containers.iter().enumerate() {
            let parsed = config.parse_image(&container.image);
            // The canonical form is formatted only when a pattern must see it.
            if !filter.is_empty() {
                let canonical = parsed.as_ref().ok().map(ImageRef::to_string);
                if !filter.admits(&container.image, canonical.as_deref()) {
                    continue;
                }
            }
            // Without credentials of its own, a use's key is its reference's and platforms'
            // alone: a chart's thousands of containers share a few keys, not one copy each.
            let shared = own.is_none().then(|| (container.image.clone(), schedulable.clone()));
            if let Some((key, replacement)) = shared.as_ref().and_then(|s| anonymous.get(s)) {
                let (key, replacement) = (key.clone(), replacement.clone());
                let user = ContainerRef { workload: record.workload.clone(), container: container.name.clone() };
                let written = container.image.clone();
                uses.push(ImageUse { user, spec, written, key, sources: Sources::default(), replacement });
                continue;
            }
            let (key, sources, replacement) = match parsed {
                Ok(image) => {
                    let replacement = config.replacement(&image).map(|(image, condition)| {
                        let (credentials, sources) = credentials_for(own, &image);
                        let sources = sources_of(sources);
                        let key = key_of(image, credentials, schedulable.clone());
                        Box::new(Replacement { key, sources, when_absent: condition == Condition::WhenAbsent })
                    });
                    let (credentials, sources) = credentials_for(own, &image);
                    (Ok(key_of(image, credentials, schedulable.clone())), sources_of(sources), replacement)
                }
                Err(e) => (Err(e), Sources::default(), None),
            };
            if let Some(shared) = shared {
                anonymous.insert(shared, (key.clone(), replacement.clone()));
            }
            let user = ContainerRef { workload: record.workload.clone(), container: container.name.clone() };
            uses.push(ImageUse { user, spec, written: container.image.clone(), key, sources, replacement });
        }
    }
    uses
}

/// Where each of a key's credentials comes from, as a use names them.
pub type Sources = Arc<[CredentialSource]>;

/// The key of a use without credentials of its own, and of its replacement.
type AnonymousKey = (Result<ImageKey, ImageRefError>, Option<Box<Replacement>>);

/// The keys to probe, each with the uses it answers for, in key order.
pub fn by_key(uses: &[ImageUse]) -> BTreeMap<&ImageKey, Vec<&ImageUse>> {
    let mut keys: BTreeMap<&ImageKey, Vec<&ImageUse>> = BTreeMap::new();
    for image_use in uses {
        if let Ok(key) = &image_use.key {
            keys.entry(key).or_default().push(image_use);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::DockerCredentials;

    fn record(namespace: &str, name: &str, images: &[&str]) -> WorkloadRecord {
        crate::inventory::fixtures::deployment(namespace, name, images)
    }

    fn secret(registry: &str, user: &str) -> WorkloadCredentials {
        WorkloadCredentials {
            secrets: vec![("s".into(), Arc::new(DockerCredentials::single(registry, Credential::basic(user, "pw"))))],
            ..WorkloadCredentials::default()
        }
    }

    #[test]
    fn one_key_per_image_and_credential_with_every_use() {
        let records = [
            record("a", "web", &["nginx", "docker.io/library/nginx:latest", "quay.io/x/y:1"]),
            record("b", "api", &["nginx:latest", "Bad Image"]),
        ];
        let (for_a, for_b) = (secret("quay.io", "alice"), secret("docker.io", "bob"));
        let uses = resolve(
            &records,
            |r| Some(if r.workload.namespace == "a" { &for_a } else { &for_b }),
            &RegistryConfig::default(),
            &ImageFilter::default(),
            &Arc::from(Vec::new()),
        );
        assert_eq!(uses.len(), 5);
        assert_eq!(uses[4].user.to_string(), "Deployment b/api (c1)");
        assert!(uses[4].key.is_err(), "an unparsable reference is kept, with its error");
        let keys = by_key(&uses);
        let summary: Vec<(String, Option<String>, usize)> = keys
            .iter()
            .map(|(k, users)| {
                let user = k.credentials.first().map(|c| format!("{c:?}"));
                (k.to_string(), user, users.len())
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("docker.io/library/nginx:latest".to_string(), None, 2),
                ("docker.io/library/nginx:latest".to_string(), Some("Basic(bob, password redacted)".to_string()), 1),
                ("quay.io/x/y:1".to_string(), Some("Basic(alice, password redacted)".to_string()), 1),
            ],
            "namespace a's secret is for quay.io only; b's Docker Hub secret makes its nginx its own key"
        );
    }

    #[test]
    fn workloads_sharing_credentials_share_one_key() {
        let records = [record("a", "web", &["quay.io/x/y:1"]), record("a", "api", &["quay.io/x/y:1"])];
        let (one, other) = (secret("quay.io", "alice"), secret("quay.io", "alice"));
        let uses = resolve(
            &records,
            |r| Some(if r.workload.name == "web" { &one } else { &other }),
            &RegistryConfig::default(),
            &ImageFilter::default(),
            &Arc::from(Vec::new()),
        );
        let [web, api] = [&uses[0], &uses[1]].map(|u| u.key.as_ref().expect("parses"));
        assert!(Arc::ptr_eq(&web.0, &api.0), "one allocation for the equal key, not a copy per use");
    }

    #[test]
    fn a_container_series_stays_three_words_with_its_replacement_condition() {
        // One per container of the cluster (docs/architecture.md, "Footprint").
        assert_eq!(std::mem::size_of::<ContainerSeries>(), 3 * std::mem::size_of::<usize>());
    }

    #[test]
    fn a_deprecated_registry_gets_its_replacement_with_the_replacements_credentials() {
        let records = [record("a", "web", &["k8s.gcr.io/pause:3.9", "registry.k8s.io/pause:3.9"])];
        let mut both = secret("k8s.gcr.io", "old");
        both.secrets.push((
            "new".into(),
            Arc::new(DockerCredentials::single("registry.k8s.io", Credential::basic("new", "pw"))),
        ));
        let platforms: Arc<[Platform]> = Arc::from(vec![Platform::new("linux", "arm64", None)]);
        let uses = resolve(&records, |_| Some(&both), &RegistryConfig::default(), &ImageFilter::default(), &platforms);
        let replacement = uses[0].replacement.as_ref().expect("k8s.gcr.io is deprecated");
        assert_eq!(replacement.key.image.to_string(), "registry.k8s.io/pause:3.9");
        assert_eq!(replacement.key.platforms, platforms);
        let names = |chain: Vec<SourcedCredential>| chain.into_iter().map(|c| c.source.to_string()).collect::<Vec<_>>();
        assert_eq!(names(uses[0].chain()), ["pull secret s"]);
        assert_eq!(
            names(replacement.chain()),
            ["pull secret new"],
            "the old registry's secret never goes to the new one"
        );
        assert_eq!(replacement.key, *uses[1].key.as_ref().expect("parses"), "the same key as a use of the replacement");
        assert!(uses[1].replacement.is_none());
    }

    #[test]
    fn the_filter_sees_written_and_canonical_forms() {
        let records = [record("a", "web", &["nginx", "quay.io/x/y:1"])];
        let filter = ImageFilter::new(vec![regex::Regex::new("^docker\\.io/").expect("valid")], vec![]);
        let uses = resolve(&records, |_| None, &RegistryConfig::default(), &filter, &Arc::from(Vec::new()));
        let written: Vec<&str> = uses.iter().map(|u| u.written.as_str()).collect();
        assert_eq!(written, ["quay.io/x/y:1"]);
    }
}
