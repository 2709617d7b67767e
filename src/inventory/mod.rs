//! The inventory: which images the workloads use, in slim records (never whole objects), kept
//! current in a [`store`], narrowed by a [`selection`], and resolved to the image [`keys`] that
//! are probed.

mod key_table;
pub mod keys;
pub mod record;
pub mod running;
pub mod selection;
pub mod selector;
pub mod slim;
pub mod store;

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::Serialize;

use crate::name::{Interner, Name};

/// Workload kinds whose pod templates reference images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    ReplicationController,
    Job,
    CronJob,
    Pod,
    PodTemplate,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 9] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::Pod,
        WorkloadKind::PodTemplate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::Pod => "Pod",
            WorkloadKind::PodTemplate => "PodTemplate",
        }
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// `deployment`, `Deployment` and `DEPLOYMENT` alike, as users type kinds in flags.
    pub fn from_kind_ignoring_case(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(kind))
    }

    /// Where the pod spec sits inside an object of this kind.
    pub fn pod_spec_path(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::Pod => &["spec"],
            WorkloadKind::PodTemplate => &["template", "spec"],
            WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => &["spec", "template", "spec"],
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerRole {
    Container,
    Init,
    Ephemeral,
}

/// A workload, by identity. Shown as `Kind namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: Name,
    pub name: Name,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One container of a workload, by identity: who uses an image. Shown as
/// `Kind namespace/name (container)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ContainerRef {
    #[serde(flatten)]
    pub workload: WorkloadRef,
    pub container: Name,
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.workload, self.container)
    }
}

/// One container of a workload's pod template.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerSpec {
    pub name: Name,
    pub role: ContainerRole,
    /// The reference as written in the manifest.
    pub image: Name,
}

/// The slim record the inventory keeps per workload: never the whole object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRecord {
    pub workload: WorkloadRef,
    pub containers: Box<[ContainerSpec]>,
    /// `imagePullSecrets` of the pod template, in order.
    pub pull_secrets: Box<[Name]>,
    /// The pod template's service account (`default` when unset).
    pub service_account: Name,
    /// `spec.replicas` of the kinds that have it (absent means 1, as the API server defaults it).
    pub replicas: Option<i32>,
    /// `spec.suspend` of CronJobs and Jobs.
    pub suspended: bool,
    /// The node selector and required node affinity on platform labels, when there are some:
    /// the platforms its pods can be scheduled on.
    pub platforms: Option<Box<crate::platform::PlatformConstraints>>,
}

impl WorkloadRecord {
    /// The same record with its names taken from `names`: equal names across records are one
    /// allocation (a namespace, an image, a container name). The workload's own name is no
    /// other record's: it is kept as it came, not held in the table too.
    pub fn interned(mut self, names: &mut Interner) -> Self {
        self.workload.namespace = names.share(&self.workload.namespace);
        for container in &mut self.containers {
            container.name = names.share(&container.name);
            container.image = names.share(&container.image);
        }
        for secret in &mut self.pull_secrets {
            *secret = names.share(secret);
        }
        self.service_account = names.share(&self.service_account);
        self
    }

    /// Scaled to zero or suspended: such workloads are left out unless asked for.
    pub fn is_disabled(&self) -> bool {
        self.replicas == Some(0) || self.suspended
    }
}

/// Something that is for one workload.
pub trait ForWorkload {
    fn workload(&self) -> &WorkloadRef;
}

impl ForWorkload for WorkloadRecord {
    fn workload(&self) -> &WorkloadRef {
        &self.workload
    }
}

impl<T: ForWorkload + ?Sized> ForWorkload for Box<T> {
    fn workload(&self) -> &WorkloadRef {
        (**self).workload()
    }
}

impl<T: ForWorkload + ?Sized> ForWorkload for std::sync::Arc<T> {
    fn workload(&self) -> &WorkloadRef {
        (**self).workload()
    }
}

/// A value in a hash set, found by its workload: the set holds each identity once, inside the
/// value, not once as a key and again in the value.
#[derive(Debug)]
pub struct ByWorkload<T>(pub T);

impl<T: ForWorkload> Borrow<WorkloadRef> for ByWorkload<T> {
    fn borrow(&self) -> &WorkloadRef {
        self.0.workload()
    }
}

impl<T: ForWorkload> PartialEq for ByWorkload<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.workload() == other.0.workload()
    }
}

impl<T: ForWorkload> Eq for ByWorkload<T> {}

impl<T: ForWorkload> Hash for ByWorkload<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.workload().hash(state);
    }
}

/// Records for unit tests across the crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A Deployment with one container per image, named `c0`, `c1`, ….
    pub fn deployment(namespace: &str, name: &str, images: &[&str]) -> WorkloadRecord {
        WorkloadRecord {
            workload: WorkloadRef { kind: WorkloadKind::Deployment, namespace: namespace.into(), name: name.into() },
            containers: images
                .iter()
                .enumerate()
                .map(|(i, image)| ContainerSpec {
                    name: format!("c{i}").into(),
                    role: ContainerRole::Container,
                    image: (*image).into(),
                })
                .collect(),
            pull_secrets: Box::default(),
            service_account: "default".into(),
            replicas: Some(1),
            suspended: false,
            platforms: None,
        }
    }
}
