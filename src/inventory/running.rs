//! What is running: the image digests each workload container's pods started with
//! (`status.containerStatuses[].imageID`), pods mapped to their workload through their owners
//! (Pod → ReplicaSet → Deployment, Pod → Job → CronJob, …). Kept slim: a digest is 32 bytes.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::Arc;

use super::{ContainerRef, WorkloadKind, WorkloadRef};
use crate::name::{Interner, Name};

/// A sha256 digest, as bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// From `sha256:<hex>`, or an imageID `<repository>@sha256:<hex>` (containerd's, docker's
    /// `docker-pullable://…@sha256:…`). Other algorithms are not kept.
    pub fn parse(text: &str) -> Option<Self> {
        let digest = text.rsplit_once('@').map_or(text, |(_, d)| d);
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// As its text: a report of 100,000 workload containers holds their digests as 32 bytes each,
/// not as strings of 71.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An object by identity, as 64 bits of a hash of its kind, namespace and name: what the
/// running-pod tables are keyed by and point with, so neither a pod nor a ReplicaSet costs a
/// copy of a name. Two of a cluster's objects would share one with a probability of about
/// n²/2⁶⁵ (10⁻¹¹ for 20,000 pods); the worst it could do is mix two pods' digests into one
/// drift answer. Never zero, so an `Option` of one is 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(NonZeroU64);

impl ObjectKey {
    pub fn of(kind: WorkloadKind, namespace: &str, name: &str) -> Self {
        // SipHash with fixed keys: the same object gives the same key in every process.
        let mut hasher = std::hash::DefaultHasher::new();
        (kind.as_str(), namespace, name).hash(&mut hasher);
        ObjectKey(NonZeroU64::new(hasher.finish()).unwrap_or(NonZeroU64::MIN))
    }

    /// A workload's key.
    pub fn of_workload(workload: &WorkloadRef) -> Self {
        ObjectKey::of(workload.kind, &workload.namespace, &workload.name)
    }
}

/// A pod's containers with the digest each runs; shared by the pods of one template.
pub type PodContainers = Arc<[(Name, Digest)]>;

/// What one pod runs: the object that made it (its ReplicaSet, Job or StatefulSet…; the pod
/// itself when no controller owns it), by key, and each container's digest. The container
/// list is shared: the pods of one template hold one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    pub owner: ObjectKey,
    pub containers: PodContainers,
}

impl RunningPod {
    /// The pod with its container list as `lists` holds it (one allocation for every pod of a
    /// template), its names from `names`.
    pub fn shared(self, names: &mut Interner, lists: &mut Interner<[(Name, Digest)]>) -> RunningPod {
        let containers = match lists.get(&self.containers) {
            Some(held) => held,
            None => {
                let shared: Vec<(Name, Digest)> =
                    self.containers.iter().map(|(name, digest)| (names.share(name), *digest)).collect();
                lists.share_arc(&shared.into())
            }
        };
        RunningPod { owner: self.owner, containers }
    }
}

/// Whose an object is, by its controlling owner reference: a workload kind pullcheck tracks
/// (a Pod's ReplicaSet, a ReplicaSet's Deployment, a Job's CronJob), by key, or a kind it does
/// not (a Node's mirror pod, an Argo Rollout's ReplicaSet), whose pods belong to no workload
/// pullcheck reports. A ReplicaSet or Job no controller owns has no entry in the owners'
/// tables: it is the workload itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnedBy {
    Workload(ObjectKey),
    Untracked,
}

/// The workload a pod belongs to: its owner's owner for ReplicaSets and Jobs a controller
/// owns, else its owner (the pod itself when no controller owns it). `None`: no workload
/// pullcheck reports.
pub fn workload_of(running: &RunningPod, owned_by: impl Fn(ObjectKey) -> Option<OwnedBy>) -> Option<ObjectKey> {
    match owned_by(running.owner) {
        Some(OwnedBy::Workload(workload)) => Some(workload),
        Some(OwnedBy::Untracked) => None,
        None => Some(running.owner),
    }
}

/// What each workload's pods run: each pod's container list (shared with the store, not
/// copied) under the workload it belongs to, sorted by workload. Built when drift is looked at
/// and dropped after: one allocation of 24 bytes a pod, where a table of digests per workload
/// container took ~100 (docs/architecture.md, "Footprint").
#[derive(Debug, Default)]
pub struct Running {
    pods: Vec<(ObjectKey, PodContainers)>,
}

impl Running {
    /// The digests a workload container's pods run, sorted, each once; empty when no pod of
    /// it runs.
    pub fn of(&self, user: &ContainerRef) -> Vec<Digest> {
        let mut digests = Vec::new();
        self.digests_into(ObjectKey::of_workload(&user.workload), &user.container, &mut digests);
        digests
    }

    /// As [`Running::of`], for the workload's key, into `digests` (cleared first): a rebuild
    /// of every series asks for each and reuses one list.
    pub fn digests_into(&self, workload: ObjectKey, container: &Name, digests: &mut Vec<Digest>) {
        digests.clear();
        let from = self.pods.partition_point(|(w, _)| *w < workload);
        digests.extend(
            self.pods[from..]
                .iter()
                .take_while(|(w, _)| *w == workload)
                .flat_map(|(_, containers)| containers.iter())
                .filter(|(name, _)| name == container)
                .map(|(_, digest)| *digest),
        );
        digests.sort_unstable();
        digests.dedup();
    }

    /// Pods that belong to a workload pullcheck reports.
    pub fn pods(&self) -> usize {
        self.pods.len()
    }
}

/// What every workload's pods run; `owned_by` says whose a ReplicaSet's or Job's pods are.
pub fn running_digests<'a>(
    pods: impl IntoIterator<Item = &'a RunningPod>,
    owned_by: impl Fn(ObjectKey) -> Option<OwnedBy>,
) -> Running {
    let mut pods: Vec<(ObjectKey, PodContainers)> = pods
        .into_iter()
        .filter_map(|running| Some((workload_of(running, &owned_by)?, running.containers.clone())))
        .collect();
    pods.sort_unstable_by_key(|(workload, _)| *workload);
    pods.shrink_to_fit();
    Running { pods }
}

/// Whether the running pods of a container would get something else on their next start: some
/// run another digest than the tag resolves to now. `None` when unknown: no running pod, or
/// the current digest not known.
pub fn drift(running: &[Digest], current: Option<Digest>) -> Option<bool> {
    if running.is_empty() {
        return None;
    }
    let current = current?;
    Some(running.iter().any(|d| *d != current))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn digest(s: &str) -> Digest {
        Digest::parse(s).expect("a digest")
    }

    #[test]
    fn image_ids_in_every_form() {
        assert_eq!(Digest::parse(A).map(|d| d.to_string()).as_deref(), Some(A));
        assert_eq!(Digest::parse(&format!("docker.io/library/nginx@{A}")), Some(digest(A)));
        assert_eq!(Digest::parse(&format!("docker-pullable://nginx@{A}")), Some(digest(A)));
        assert_eq!(Digest::parse("sha256:abc"), None);
        assert_eq!(Digest::parse("sha512:aa"), None);
    }

    #[test]
    fn pods_map_to_their_workload_through_owners() {
        use WorkloadKind::*;
        let key = |kind, name: &str| ObjectKey::of(kind, "ns", name);
        let owners = HashMap::from([
            (key(ReplicaSet, "web-5d8"), OwnedBy::Workload(key(Deployment, "web"))),
            (key(ReplicaSet, "argo-7f9"), OwnedBy::Untracked),
        ]);
        let pod = |owner: ObjectKey, d: &str| RunningPod {
            owner,
            containers: Arc::from(vec![(Name::from("app"), digest(d))]),
        };
        let pods = [
            pod(key(ReplicaSet, "web-5d8"), A),
            pod(key(ReplicaSet, "web-5d8"), B),
            pod(key(ReplicaSet, "web-5d8"), B),
            RunningPod {
                owner: key(StatefulSet, "db"),
                containers: Arc::from(vec![(Name::from("app"), digest(A)), (Name::from("side"), digest(B))]),
            },
            pod(key(Pod, "debug"), A),
            pod(key(ReplicaSet, "argo-7f9"), A),
            pod(key(ReplicaSet, "solo"), B),
        ];
        let running = running_digests(&pods, |k| owners.get(&k).copied());
        let of = |kind, name: &str| {
            running.of(&ContainerRef {
                workload: WorkloadRef { kind, namespace: "ns".into(), name: name.into() },
                container: "app".into(),
            })
        };
        assert_eq!(of(Deployment, "web"), [digest(A), digest(B)], "sorted, each once");
        assert_eq!(of(StatefulSet, "db"), [digest(A)], "its own container's digests only");
        let side = ContainerRef {
            workload: WorkloadRef { kind: StatefulSet, namespace: "ns".into(), name: "db".into() },
            container: "side".into(),
        };
        assert_eq!(running.of(&side), [digest(B)]);
        assert_eq!(of(Pod, "debug").len(), 1);
        assert_eq!(of(ReplicaSet, "solo"), [digest(B)], "a ReplicaSet no controller owns is the workload");
        assert_eq!(running.pods(), 6, "the pods of a ReplicaSet a Rollout owns belong to no workload");
        assert_eq!(drift(&of(Deployment, "web"), Some(digest(A))), Some(true), "one pod runs B");
        assert_eq!(drift(&of(StatefulSet, "db"), Some(digest(A))), Some(false));
        assert_eq!(drift(&[], Some(digest(A))), None, "no running pod: unknown");
        assert_eq!(drift(&of(StatefulSet, "db"), None), None, "not probed: unknown");
        assert_ne!(ObjectKey::of(Pod, "a", "bc"), ObjectKey::of(Pod, "ab", "c"), "parts are delimited");
        assert_ne!(key(ReplicaSet, "web"), key(Deployment, "web"), "kinds are part of the key");
    }
}
