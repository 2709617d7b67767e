//! An object's body reduced to the slim record the inventory keeps: the one reducer behind
//! manifests on disk and objects from the cluster, so both give the same answer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::running::{Digest, ObjectKey, OwnedBy, RunningPod};
use super::slim::{Loose, SlimObject, SlimSpec, SlimTemplate};
use super::{ContainerRole, ContainerSpec, WorkloadKind, WorkloadRecord, WorkloadRef};
use crate::name::Name;
use crate::platform::{PlatformConstraints, PlatformExpression};

/// The namespace of an object that names none (a manifest applied with `kubectl apply -f`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object's namespace, `default` when it names none.
pub fn namespace_of(object: &SlimObject) -> &str {
    object.metadata.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE)
}

/// Why an object could not be reduced to a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{kind} without metadata.name")]
    NoName { kind: WorkloadKind },
    #[error("{kind} {name}: no pod spec at {path}")]
    NoPodSpec { kind: WorkloadKind, name: String, path: String },
    #[error("{kind} {name}: {}", problems.join("; "))]
    PodSpec { kind: WorkloadKind, name: String, problems: Vec<String> },
    #[error("{kind} {name}: no containers")]
    NoContainers { kind: WorkloadKind, name: String },
    /// A field of the wrong type where pullcheck reads it strictly (`metadata.name: 3`).
    #[error("{kind}: {problem}")]
    Undecodable { kind: WorkloadKind, problem: String },
}

/// The slim record of a workload object. `Ok(None)`: the object is managed by another workload
/// (a Deployment's ReplicaSet, a CronJob's Job, a controller's Pod) and is reported through it.
pub fn record_from_object(kind: WorkloadKind, object: &SlimObject) -> Result<Option<WorkloadRecord>, RecordError> {
    let name = object.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(RecordError::NoName { kind });
    }
    if is_managed(kind, object.metadata.owner_references.as_deref()) {
        return Ok(None);
    }
    let namespace = namespace_of(object);
    let workload = WorkloadRef { kind, namespace: namespace.into(), name: name.into() };
    let spec = object.spec.as_ref();
    let pod_spec = match kind {
        WorkloadKind::Pod => spec,
        WorkloadKind::PodTemplate => template(&object.template),
        WorkloadKind::CronJob => spec.and_then(|s| template(&s.job_template)).and_then(|job| template(&job.template)),
        _ => spec.and_then(|s| template(&s.template)),
    };
    let pod_spec = pod_spec.ok_or_else(|| RecordError::NoPodSpec {
        kind,
        name: name.into(),
        path: kind.pod_spec_path().join("."),
    })?;
    let replicas = match kind {
        WorkloadKind::Deployment
        | WorkloadKind::StatefulSet
        | WorkloadKind::ReplicaSet
        | WorkloadKind::ReplicationController => Some(
            spec.and_then(|s| loose(&s.replicas))
                .map_or(1, |r| i32::try_from(*r).unwrap_or(if *r < 0 { 0 } else { i32::MAX })),
        ),
        _ => None,
    };
    let suspended = matches!(kind, WorkloadKind::CronJob | WorkloadKind::Job)
        && spec.and_then(|s| loose(&s.suspend)).copied().unwrap_or(false);
    let (containers, pull_secrets, service_account) = extract_pod_spec(&workload, pod_spec)?;
    let platforms = platform_constraints(pod_spec).map(Box::new);
    Ok(Some(WorkloadRecord {
        workload,
        containers: containers.into(),
        pull_secrets: pull_secrets.into(),
        service_account,
        replicas,
        suspended,
        platforms,
    }))
}

/// Whose an object is, by its controlling owner reference, when it has one.
pub fn controller_of(object: &SlimObject) -> Option<OwnedBy> {
    let reference =
        object.metadata.owner_references.as_deref().into_iter().flatten().find(|o| o.controller.unwrap_or(false))?;
    Some(match WorkloadKind::from_kind(&reference.kind) {
        Some(kind) => OwnedBy::Workload(ObjectKey::of(kind, namespace_of(object), &reference.name)),
        None => OwnedBy::Untracked,
    })
}

/// What a Pod runs: each container's digest from its status, and the workload that made it
/// (its controller, or the pod itself: `itself`, its own key). `None` when no container
/// reports a digest yet (pending, pulling), or when a kind pullcheck does not track controls it.
pub fn running_pod(object: &SlimObject, itself: ObjectKey) -> Option<RunningPod> {
    let status = object.status.as_ref()?;
    let containers: Vec<(Name, Digest)> = [&status.init_container_statuses, &status.container_statuses]
        .into_iter()
        .filter_map(loose)
        .flatten()
        .filter_map(Loose::get)
        .filter_map(|c| {
            let digest = Digest::parse(loose(&c.image_id)?)?;
            Some((loose(&c.name)?.as_str().into(), digest))
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    let owner = match controller_of(object) {
        Some(OwnedBy::Workload(owner)) => owner,
        Some(OwnedBy::Untracked) => return None,
        None => itself,
    };
    Some(RunningPod { owner, containers: containers.into() })
}

/// A template's pod spec.
fn template(template: &Option<SlimTemplate>) -> Option<&SlimSpec> {
    template.as_ref().and_then(|t| t.spec.as_deref())
}

/// The value of a field that is there and of the right shape.
fn loose<T>(field: &Option<Loose<T>>) -> Option<&T> {
    field.as_ref().and_then(Loose::get)
}

/// The pod spec's `nodeSelector` and required node affinity on platform labels; `None` when
/// it has none (every node platform will do). Malformed parts are left out: the API server
/// would have refused them, and a manifest's typo must not drop the workload.
fn platform_constraints(spec: &SlimSpec) -> Option<PlatformConstraints> {
    let node_selector: Vec<(String, String)> = loose(&spec.node_selector)
        .into_iter()
        .flatten()
        .filter(|(k, _)| PlatformConstraints::is_platform_label(k))
        .filter_map(|(k, v)| v.get().map(|v| (k.clone(), v.clone())))
        .collect();
    let terms: Vec<Vec<PlatformExpression>> = loose(&spec.affinity)
        .and_then(|a| loose(&a.node_affinity))
        .and_then(|n| loose(&n.required_during_scheduling_ignored_during_execution))
        .and_then(|r| loose(&r.node_selector_terms))
        .into_iter()
        .flatten()
        .filter_map(Loose::get)
        .map(|term| {
            loose(&term.match_expressions)
                .into_iter()
                .flatten()
                .filter_map(Loose::get)
                .filter_map(|e| {
                    let values = loose(&e.values).into_iter().flatten().filter_map(Loose::get).cloned().collect();
                    Some(PlatformExpression {
                        key: loose(&e.key)?.clone(),
                        operator: loose(&e.operator)?.clone(),
                        values,
                    })
                })
                .filter(|e| PlatformConstraints::is_platform_label(&e.key))
                .collect()
        })
        .collect();
    // Terms without a platform expression admit every platform: so does the whole affinity.
    let terms = if terms.iter().any(Vec::is_empty) { Vec::new() } else { terms };
    let constraints = PlatformConstraints { node_selector, terms };
    (!constraints.is_empty()).then_some(constraints)
}

/// Managed objects: ReplicaSets and Jobs whose controller is another workload, Pods with any controller.
fn is_managed(kind: WorkloadKind, owner_references: Option<&[OwnerReference]>) -> bool {
    let mut controllers =
        owner_references.into_iter().flatten().filter(|o| o.controller.unwrap_or(false)).map(|o| o.kind.as_str());
    match kind {
        WorkloadKind::Pod => controllers.next().is_some(),
        _ => controllers.any(|k| WorkloadKind::from_kind(k).is_some()),
    }
}

/// Containers, init containers and ephemeral containers, pull secrets and service account of a pod spec.
fn extract_pod_spec(
    workload: &WorkloadRef,
    spec: &SlimSpec,
) -> Result<(Vec<ContainerSpec>, Vec<Name>, Name), RecordError> {
    let mut problems = Vec::new();
    let pull_secrets = match &spec.image_pull_secrets {
        None => Vec::new(),
        Some(Loose(Some(secrets))) => {
            secrets.iter().filter_map(Loose::get).filter_map(|s| loose(&s.name)).map(Name::from).collect()
        }
        Some(Loose(None)) => {
            problems.push("imagePullSecrets is not a list".to_string());
            Vec::new()
        }
    };
    let service_account = loose(&spec.service_account_name)
        .or_else(|| loose(&spec.service_account))
        .filter(|s| !s.is_empty())
        .map_or("default", String::as_str)
        .into();
    let mut containers = Vec::new();
    for (field, role, list) in [
        ("initContainers", ContainerRole::Init, &spec.init_containers),
        ("containers", ContainerRole::Container, &spec.containers),
        ("ephemeralContainers", ContainerRole::Ephemeral, &spec.ephemeral_containers),
    ] {
        let list = match list {
            None => continue,
            Some(Loose(Some(list))) => list,
            Some(Loose(None)) => {
                problems.push(format!("{field} is not a list"));
                continue;
            }
        };
        for (i, container) in list.iter().enumerate() {
            let container = container.get();
            let name = container.and_then(|c| loose(&c.name)).map_or("", String::as_str);
            match container.and_then(|c| loose(&c.image)) {
                Some(image) => containers.push(ContainerSpec {
                    name: if name.is_empty() { format!("{field}[{i}]").into() } else { name.into() },
                    role,
                    image: image.into(),
                }),
                None => problems.push(format!("{field}[{i}] ({name}) has no image")),
            }
        }
    }
    let (kind, name) = (workload.kind, workload.name.to_string());
    if !problems.is_empty() {
        return Err(RecordError::PodSpec { kind, name, problems });
    }
    if containers.is_empty() {
        return Err(RecordError::NoContainers { kind, name });
    }
    Ok((containers, pull_secrets, service_account))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(spec: serde_json::Value) -> WorkloadRecord {
        let body = serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec});
        let object: SlimObject = serde_json::from_value(body).expect("decodes");
        record_from_object(WorkloadKind::Pod, &object).ok().flatten().expect("a record")
    }

    #[test]
    fn node_selection_on_platform_labels_is_kept() {
        let pinned = record(serde_json::json!({
            "containers": [{"name": "c", "image": "x"}],
            "nodeSelector": {"kubernetes.io/arch": "arm64", "disktype": "ssd"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                                      {"key": "zone", "operator": "In", "values": ["a"]}]}
            ]}}}
        }));
        let constraints = pinned.platforms.expect("constraints");
        assert_eq!(constraints.node_selector, vec![("kubernetes.io/arch".to_string(), "arm64".to_string())]);
        assert_eq!(constraints.terms.len(), 1);
        assert_eq!(constraints.terms[0].len(), 1, "only platform labels are kept");

        let free = record(serde_json::json!({
            "containers": [{"name": "c", "image": "x"}],
            "nodeSelector": {"disktype": "ssd"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
            ]}}}
        }));
        assert!(free.platforms.is_none(), "a term without platform labels admits every platform");
    }
}
