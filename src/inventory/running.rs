//! What is running: the image digests each workload container's pods started with
//! (`status.containerStatuses[].imageID`), pods mapped to their workload through their owners
//! (Pod → ReplicaSet → Deployment, Pod → Job → CronJob, …). Kept slim: a digest is 32 bytes.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::ops::Range;
use std::sync::Arc;

use super::{ContainerRef, WorkloadKind, WorkloadRef};
use crate::name::Name;

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

/// What one pod runs: the object that made it (its ReplicaSet, Job or StatefulSet…; the pod
/// itself when no controller owns it), by key, and each container's digest. The container
/// list is shared: the pods of one template hold one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    pub owner: ObjectKey,
    pub containers: Arc<[(Name, Digest)]>,
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

/// What each workload's containers run: per container, its pods' digests, sorted, each once.
/// Built when drift is looked at and dropped after, so it is flat — a few large allocations,
/// not one per workload — and leaves no holes in the heap behind it.
#[derive(Debug, Default)]
pub struct Running {
    /// Each workload container with running pods, sorted, and where its digests are.
    containers: Vec<(ObjectKey, Name, Range<usize>)>,
    digests: Vec<Digest>,
}

impl Running {
    /// The digests a workload container's pods run.
    pub fn of(&self, user: &ContainerRef) -> Option<&[Digest]> {
        let wanted = (ObjectKey::of_workload(&user.workload), user.container.as_str());
        let index = self.containers.binary_search_by(|(w, name, _)| (*w, name.as_str()).cmp(&wanted)).ok()?;
        self.digests.get(self.containers[index].2.clone())
    }

    /// Workload containers with running pods.
    pub fn containers(&self) -> usize {
        self.containers.len()
    }
}

/// Every workload container's running digests; `owned_by` says whose a ReplicaSet's or Job's
/// pods are.
pub fn running_digests<'a, P>(pods: P, owned_by: impl Fn(ObjectKey) -> Option<OwnedBy>) -> Running
where
    P: IntoIterator<Item = &'a RunningPod>,
    P::IntoIter: Clone,
{
    // Every list allocated at its final size, its items borrowed where they can be: this is
    // built while the whole inventory is held, and a list grown by doubling was the heap's
    // peak (twice its size, and the copy).
    let pods = pods.into_iter();
    let mut each: Vec<(ObjectKey, &Name, &Digest)> =
        Vec::with_capacity(pods.clone().map(|running| running.containers.len()).sum());
    for running in pods {
        let Some(workload) = workload_of(running, &owned_by) else { continue };
        each.extend(running.containers.iter().map(|(container, digest)| (workload, container, digest)));
    }
    each.sort_unstable();
    each.dedup();
    let per_container = || each.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1));
    let mut out =
        Running { containers: Vec::with_capacity(per_container().count()), digests: Vec::with_capacity(each.len()) };
    for group in per_container() {
        let at = out.digests.len();
        out.digests.extend(group.iter().map(|(_, _, digest)| **digest));
        out.containers.push((group[0].0, group[0].1.clone(), at..out.digests.len()));
    }
    out
}

/// Whether the running pods of a container would get something else on their next start: some
/// run another digest than the tag resolves to now. `None` when unknown: no running pod, or
/// the current digest not known.
pub fn drift(running: Option<&[Digest]>, current: Option<Digest>) -> Option<bool> {
    let running = running.filter(|r| !r.is_empty())?;
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
            pod(key(StatefulSet, "db"), A),
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
        assert_eq!(of(Deployment, "web"), Some(&[digest(A), digest(B)][..]), "sorted, each once");
        assert_eq!(of(StatefulSet, "db").map(<[_]>::len), Some(1));
        assert_eq!(of(Pod, "debug").map(<[_]>::len), Some(1));
        assert_eq!(of(ReplicaSet, "solo"), Some(&[digest(B)][..]), "a ReplicaSet no controller owns is the workload");
        assert_eq!(running.containers(), 4, "the pods of a ReplicaSet a Rollout owns belong to no workload");
        assert_eq!(drift(of(Deployment, "web"), Some(digest(A))), Some(true), "one pod runs B");
        assert_eq!(drift(of(StatefulSet, "db"), Some(digest(A))), Some(false));
        assert_eq!(drift(None, Some(digest(A))), None, "no running pod: unknown");
        assert_eq!(drift(of(StatefulSet, "db"), None), None, "not probed: unknown");
        assert_ne!(ObjectKey::of(Pod, "a", "bc"), ObjectKey::of(Pod, "ab", "c"), "parts are delimited");
        assert_ne!(key(ReplicaSet, "web"), key(Deployment, "web"), "kinds are part of the key");
    }
}
