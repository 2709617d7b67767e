//! An object's body reduced to the slim record the inventory keeps: the one reducer behind
//! manifests on disk and objects from the cluster, so both give the same answer.

use serde_json::Value;

use super::{ContainerRole, ContainerSpec, WorkloadKind, WorkloadRecord, WorkloadRef};
use crate::platform::{PlatformConstraints, PlatformExpression};

/// The namespace of an object that names none (a manifest applied with `kubectl apply -f`).
pub const DEFAULT_NAMESPACE: &str = "default";

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
}

/// The slim record of a workload, from the object's body (the part holding `spec`, or
/// `template` for PodTemplates). `Ok(None)`: the object is managed by another workload (a
/// Deployment's ReplicaSet, a CronJob's Job, a controller's Pod) and is reported through it.
pub fn record_from_body(
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
    owner_references: Option<&Value>,
    body: &Value,
) -> Result<Option<WorkloadRecord>, RecordError> {
    if name.is_empty() {
        return Err(RecordError::NoName { kind });
    }
    if is_managed(kind, owner_references) {
        return Ok(None);
    }
    let namespace = if namespace.is_empty() { DEFAULT_NAMESPACE } else { namespace };
    let workload = WorkloadRef { kind, namespace: namespace.into(), name: name.into() };
    let mut spec = Some(body);
    for key in kind.pod_spec_path() {
        spec = spec.and_then(|v| v.get(*key));
    }
    let spec =
        spec.ok_or_else(|| RecordError::NoPodSpec { kind, name: name.into(), path: kind.pod_spec_path().join(".") })?;
    let workload_spec = body.get("spec");
    let replicas = match kind {
        WorkloadKind::Deployment
        | WorkloadKind::StatefulSet
        | WorkloadKind::ReplicaSet
        | WorkloadKind::ReplicationController => Some(
            workload_spec
                .and_then(|s| s.get("replicas"))
                .and_then(Value::as_i64)
                .map_or(1, |r| i32::try_from(r).unwrap_or(i32::MAX)),
        ),
        _ => None,
    };
    let suspended = matches!(kind, WorkloadKind::CronJob | WorkloadKind::Job)
        && workload_spec.and_then(|s| s.get("suspend")).and_then(Value::as_bool).unwrap_or(false);
    let (containers, pull_secrets, service_account) = extract_pod_spec(&workload, spec)?;
    let platforms = platform_constraints(spec).map(Box::new);
    Ok(Some(WorkloadRecord { workload, containers, pull_secrets, service_account, replicas, suspended, platforms }))
}

/// The pod spec's `nodeSelector` and required node affinity on platform labels; `None` when
/// it has none (every node platform will do). Malformed parts are left out: the API server
/// would have refused them, and a manifest's typo must not drop the workload.
fn platform_constraints(spec: &Value) -> Option<PlatformConstraints> {
    let node_selector: Vec<(String, String)> = spec
        .get("nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| PlatformConstraints::is_platform_label(k))
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    let terms: Vec<Vec<PlatformExpression>> = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|term| {
            term.get("matchExpressions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let key = e.get("key").and_then(Value::as_str)?;
                    let operator = e.get("operator").and_then(Value::as_str)?;
                    let values = e.get("values").and_then(Value::as_array).into_iter().flatten();
                    Some(PlatformExpression {
                        key: key.to_string(),
                        operator: operator.to_string(),
                        values: values.filter_map(Value::as_str).map(str::to_string).collect(),
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
fn is_managed(kind: WorkloadKind, owner_references: Option<&Value>) -> bool {
    let controllers = owner_references
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|o| o.get("controller").and_then(Value::as_bool).unwrap_or(false));
    let mut owner_kinds = controllers.map(|o| o.get("kind").and_then(Value::as_str).unwrap_or_default());
    match kind {
        WorkloadKind::Pod => owner_kinds.next().is_some(),
        _ => owner_kinds.any(|k| WorkloadKind::from_kind(k).is_some()),
    }
}

/// Containers, init containers and ephemeral containers, pull secrets and service account of a pod spec.
fn extract_pod_spec(
    workload: &WorkloadRef,
    spec: &Value,
) -> Result<(Vec<ContainerSpec>, Vec<String>, String), RecordError> {
    let mut problems = Vec::new();
    let pull_secrets = match spec.get("imagePullSecrets") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(secrets)) => {
            secrets.iter().filter_map(|s| s.get("name").and_then(Value::as_str)).map(str::to_string).collect()
        }
        Some(_) => {
            problems.push("imagePullSecrets is not a list".to_string());
            Vec::new()
        }
    };
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let mut containers = Vec::new();
    for (field, role) in [
        ("initContainers", ContainerRole::Init),
        ("containers", ContainerRole::Container),
        ("ephemeralContainers", ContainerRole::Ephemeral),
    ] {
        let list = match spec.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(c)) => c,
            Some(_) => {
                problems.push(format!("{field} is not a list"));
                continue;
            }
        };
        for (i, container) in list.iter().enumerate() {
            let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
            match container.get("image").and_then(Value::as_str) {
                Some(image) => containers.push(ContainerSpec {
                    name: if name.is_empty() { format!("{field}[{i}]") } else { name.to_string() },
                    role,
                    image: image.to_string(),
                }),
                None => problems.push(format!("{field}[{i}] ({name}) has no image")),
            }
        }
    }
    let (kind, name) = (workload.kind, workload.name.clone());
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
        let body = serde_json::json!({"spec": spec});
        record_from_body(WorkloadKind::Pod, "ns", "p", None, &body).ok().flatten().expect("a record")
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
