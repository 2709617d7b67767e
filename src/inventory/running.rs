//! What is running: the image digests each workload container's pods started with
//! (`status.containerStatuses[].imageID`), pods mapped to their workload through their owners
//! (Pod → ReplicaSet → Deployment, Pod → Job → CronJob, …). Kept slim: a digest is 32 bytes.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use super::{ContainerRef, WorkloadKind, WorkloadRef};

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

/// A pod's controlling owner, or a ReplicaSet's or Job's.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// What one pod runs: its owner and each container's digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    pub owner: Option<Owner>,
    pub containers: Vec<(Box<str>, Digest)>,
}

/// A pod by identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// The workload a pod belongs to: its owner, that owner's owner for ReplicaSets and Jobs,
/// or the pod itself when no controller owns it.
pub fn workload_of(pod: &PodRef, running: &RunningPod, owners: &HashMap<WorkloadRef, Owner>) -> Option<WorkloadRef> {
    let namespace = pod.namespace.clone();
    let Some(owner) = &running.owner else {
        return Some(WorkloadRef { kind: WorkloadKind::Pod, namespace, name: pod.name.clone() });
    };
    let kind = WorkloadKind::from_kind(&owner.kind)?;
    let direct = WorkloadRef { kind, namespace, name: owner.name.clone() };
    match owners.get(&direct) {
        // A Deployment's ReplicaSet, a CronJob's Job: the workload is the owner's owner.
        Some(grand) => WorkloadKind::from_kind(&grand.kind).map(|kind| WorkloadRef {
            kind,
            namespace: direct.namespace.clone(),
            name: grand.name.clone(),
        }),
        None => Some(direct),
    }
}

/// Every workload container's running digests.
pub fn running_digests<'a>(
    pods: impl IntoIterator<Item = (&'a PodRef, &'a RunningPod)>,
    owners: &HashMap<WorkloadRef, Owner>,
) -> HashMap<ContainerRef, BTreeSet<Digest>> {
    let mut out: HashMap<ContainerRef, BTreeSet<Digest>> = HashMap::new();
    for (pod, running) in pods {
        let Some(workload) = workload_of(pod, running, owners) else { continue };
        for (container, digest) in &running.containers {
            let user = ContainerRef { workload: workload.clone(), container: container.to_string() };
            out.entry(user).or_default().insert(*digest);
        }
    }
    out
}

/// Whether the running pods of a container would get something else on their next start: some
/// run another digest than the tag resolves to now. `None` when unknown: no running pod, or
/// the current digest not known.
pub fn drift(running: Option<&BTreeSet<Digest>>, current: Option<&str>) -> Option<bool> {
    let running = running.filter(|r| !r.is_empty())?;
    let current = Digest::parse(current?)?;
    Some(running.iter().any(|d| *d != current))
}

#[cfg(test)]
mod tests {
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
        let owners = HashMap::from([(
            WorkloadRef { kind: WorkloadKind::ReplicaSet, namespace: "ns".into(), name: "web-5d8".into() },
            Owner { kind: "Deployment".into(), name: "web".into() },
        )]);
        let pod = |name: &str, owner: Option<(&str, &str)>, d: &str| {
            (
                PodRef { namespace: "ns".into(), name: name.into() },
                RunningPod {
                    owner: owner.map(|(k, n)| Owner { kind: k.into(), name: n.into() }),
                    containers: vec![("app".into(), digest(d))],
                },
            )
        };
        let pods = [
            pod("web-5d8-a", Some(("ReplicaSet", "web-5d8")), A),
            pod("web-5d8-b", Some(("ReplicaSet", "web-5d8")), B),
            pod("db-0", Some(("StatefulSet", "db")), A),
            pod("debug", None, A),
        ];
        let running = running_digests(pods.iter().map(|(p, r)| (p, r)), &owners);
        let of = |kind, name: &str| {
            running.get(&ContainerRef {
                workload: WorkloadRef { kind, namespace: "ns".into(), name: name.into() },
                container: "app".into(),
            })
        };
        assert_eq!(of(WorkloadKind::Deployment, "web").map(|s| s.len()), Some(2));
        assert_eq!(of(WorkloadKind::StatefulSet, "db").map(|s| s.len()), Some(1));
        assert_eq!(of(WorkloadKind::Pod, "debug").map(|s| s.len()), Some(1));
        assert_eq!(drift(of(WorkloadKind::Deployment, "web"), Some(A)), Some(true), "one pod runs B");
        assert_eq!(drift(of(WorkloadKind::StatefulSet, "db"), Some(A)), Some(false));
        assert_eq!(drift(None, Some(A)), None, "no running pod: unknown");
        assert_eq!(drift(of(WorkloadKind::StatefulSet, "db"), None), None, "not probed: unknown");
    }
}
