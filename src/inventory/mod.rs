//! The inventory: which images the workloads use, in slim records (never whole objects).

pub mod credentials;
pub mod files;
pub mod kube;
pub mod secrets;
pub mod selector;
pub mod store;

use std::fmt;

use serde::Serialize;

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

/// A workload, by identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

/// One container of a workload's pod template.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerSpec {
    pub name: String,
    pub role: ContainerRole,
    /// The reference as written in the manifest.
    pub image: String,
}

/// The slim record the inventory keeps per workload: never the whole object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRecord {
    pub workload: WorkloadRef,
    pub containers: Vec<ContainerSpec>,
    /// `imagePullSecrets` of the pod template, in order.
    pub pull_secrets: Vec<String>,
    /// The pod template's service account (`default` when unset).
    pub service_account: String,
    /// `spec.replicas` of the kinds that have it (absent means 1, as the API server defaults it).
    pub replicas: Option<i32>,
    /// `spec.suspend` of CronJobs and Jobs.
    pub suspended: bool,
}

impl WorkloadRecord {
    /// Scaled to zero or suspended: such workloads are left out unless asked for.
    pub fn is_disabled(&self) -> bool {
        self.replicas == Some(0) || self.suspended
    }
}

/// `--include-disabled KIND,...|all`: which disabled workloads are still checked.
#[derive(Clone, Debug, Default)]
pub struct IncludeDisabled {
    all: bool,
    kinds: Vec<WorkloadKind>,
}

impl IncludeDisabled {
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let mut include = IncludeDisabled::default();
        for value in values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()) {
            if value.eq_ignore_ascii_case("all") {
                include.all = true;
            } else {
                let kind = WorkloadKind::ALL
                    .into_iter()
                    .find(|k| k.as_str().eq_ignore_ascii_case(value))
                    .ok_or_else(|| format!("--include-disabled: unknown kind {value:?}"))?;
                include.kinds.push(kind);
            }
        }
        Ok(include)
    }

    pub fn all() -> Self {
        IncludeDisabled { all: true, kinds: Vec::new() }
    }

    pub fn admits(&self, record: &WorkloadRecord) -> bool {
        !record.is_disabled() || self.all || self.kinds.contains(&record.workload.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: WorkloadKind, replicas: Option<i32>, suspended: bool) -> WorkloadRecord {
        WorkloadRecord {
            workload: WorkloadRef { kind, namespace: "ns".into(), name: "w".into() },
            containers: vec![],
            pull_secrets: vec![],
            service_account: "default".into(),
            replicas,
            suspended,
        }
    }

    #[test]
    fn disabled_workloads_are_left_out_unless_asked_for() {
        let scaled_down = record(WorkloadKind::Deployment, Some(0), false);
        let suspended = record(WorkloadKind::CronJob, None, true);
        let running = record(WorkloadKind::Deployment, Some(2), false);
        let none = IncludeDisabled::default();
        assert!(!none.admits(&scaled_down) && !none.admits(&suspended) && none.admits(&running));
        let some = IncludeDisabled::parse(&["cronjob".into()]).expect("valid");
        assert!(!some.admits(&scaled_down) && some.admits(&suspended));
        let all = IncludeDisabled::parse(&["Deployment,all".into()]).expect("valid");
        assert!(all.admits(&scaled_down) && all.admits(&suspended));
        assert!(IncludeDisabled::parse(&["Service".into()]).is_err());
    }
}
