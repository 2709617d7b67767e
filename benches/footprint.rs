//! `pullcheck run`'s footprint at production size, as its own process: time to the watchers'
//! initial lists, to `/readyz` and to the first probe; resident memory after sync and its peak;
//! marginal bytes per workload (a second, smaller inventory), right after sync and once settled
//! (one window and the idle spell on, both inventories alike); then status-only churn through
//! the watches — resident growth and CPU it costs, against an idle spell one window after sync
//! (probes at the rate churn sees them; the registry's request rate in both is reported).
//! Optionally the live heap under heaptrack.
//!
//! The API-server harness serves objects shaped and sized as a real API server returns them
//! (managedFields with fieldsV1 trees, labels and annotations, a last-applied-configuration on
//! every third Deployment, status with conditions, Pods with containerStatuses, owner
//! references). A Pod's imageID is its image's digest (every node resolved the tag alike), one
//! Pod in 50 on an older one. Probes go to the real `docker-registry`: a few images are pushed, the rest are
//! absent (the probe path runs; the registry is not what is measured).
//!
//! ```text
//! cargo bench --bench footprint            # builds target/release/pullcheck with the bench
//! PULLCHECK_BASELINE_BIN=/path/to/old/pullcheck cargo bench --bench footprint
//! ```
//!
//! Env (defaults in brackets): PULLCHECK_BIN [the package's binary, built with the bench],
//! PULLCHECK_BASELINE_BIN [none], FOOTPRINT_VARIANTS [none: `label=path[ VAR=value…]` entries
//! separated by `;`, measured instead of the two above, for allocator and setting comparisons;
//! the variables are set on that child only], FOOTPRINT_DEPLOYMENTS [10000],
//! FOOTPRINT_IMAGES [5000], FOOTPRINT_STANDALONE [500], FOOTPRINT_SMALL_PERCENT [10],
//! FOOTPRINT_PUSHED [100], FOOTPRINT_IDLE_SECS [30], FOOTPRINT_CHURN_SECS [600],
//! FOOTPRINT_CHURN_RATE [200], FOOTPRINT_HEAPTRACK [off: `1` adds a run of the first binary
//! under heaptrack, or the labels of the variants to run so, `a,b`; glibc builds only, as
//! heaptrack sees malloc], FOOTPRINT_HEAPTRACK_CHURN_SECS [60], FOOTPRINT_OUT [target/footprint],
//! FOOTPRINT_HEAPTRACK_REPORT [none: a saved heaptrack_print report to summarize, nothing run].

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "footprint/limits.rs"]
mod limits;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Env;
use support::apiserver::ApiServer;
use support::process::{cpu_seconds, status_kib};

const WINDOW_SECS: u64 = 30;
const NAMESPACES: usize = 50;
const REPOSITORIES: usize = 20;
/// Every wait on the child is bounded by this.
const SYNC_DEADLINE: Duration = Duration::from_secs(300);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Scenario {
    deployments: usize,
    images: usize,
    standalone: usize,
    small_percent: usize,
    pushed: usize,
    idle_secs: u64,
    churn_secs: u64,
    churn_rate: u64,
}

// ---------------------------------------------------------------------------------------------
// Objects as the API server returns them.

/// A deterministic hex string of `len` characters from `seed`.
fn hex(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = String::with_capacity(len);
    while out.len() < len {
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 29;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}

fn uid(seed: u64) -> String {
    let h = hex(seed, 32);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// RFC 3339 seconds after 2026-01-01.
fn time(seconds: u64) -> String {
    let at = k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + seconds as i64).expect("a time in range");
    at.to_string()
}

/// The managedFields tree of an object (fieldsV1): `f:` per field, `k:{"name":…}` per named list
/// entry (with `.`), as the API server writes them.
fn fields_v1(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let tree = fields_v1(v);
                out.insert(format!("f:{k}"), tree);
            }
            Value::Object(out)
        }
        Value::Array(items) if items.iter().all(|i| i.get("name").is_some() || i.get("type").is_some()) => {
            let mut out = serde_json::Map::new();
            for item in items {
                let key = match (item.get("name"), item.get("type")) {
                    (Some(name), _) => format!("k:{{\"name\":{name}}}"),
                    (None, Some(t)) => format!("k:{{\"type\":{t}}}"),
                    _ => unreachable!(),
                };
                let mut tree = fields_v1(item);
                tree["."] = json!({});
                out.insert(key, tree);
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

fn managed(manager: &str, api_version: &str, at: u64, subresource: Option<&str>, fields: Value) -> Value {
    let mut entry = json!({
        "manager": manager, "operation": "Update", "apiVersion": api_version, "time": time(at),
        "fieldsType": "FieldsV1", "fieldsV1": fields
    });
    if let Some(subresource) = subresource {
        entry["subresource"] = json!(subresource);
    }
    entry
}

fn image(registry: &str, k: usize) -> String {
    format!("{registry}/bench/team-{}:v{k}", k % REPOSITORIES)
}

fn namespace(i: usize) -> String {
    format!("team-{}", i % NAMESPACES)
}

/// Labels a Helm chart puts on a workload.
fn labels(app: &str, i: usize) -> Value {
    json!({
        "app": app, "app.kubernetes.io/name": app, "app.kubernetes.io/instance": format!("{app}-prod"),
        "app.kubernetes.io/version": format!("1.{}.{}", i % 17, i % 5), "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": format!("{app}-0.{}.0", i % 9), "team": namespace(i)
    })
}

fn container(name: &str, image: &str, i: usize, main: bool) -> Value {
    let mut c = json!({
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": if main { "http" } else { "metrics" }, "containerPort": if main { 8080 } else { 9090 }, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": true}]
    });
    if main {
        c["env"] = json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "FEATURE_FLAGS", "value": format!("flag-{},flag-{}", i % 7, i % 11)}
        ]);
        c["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
        c["readinessProbe"] = json!({"httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTP"},
            "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
        c["securityContext"] = json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}});
    } else {
        c["args"] = json!(["--listen=:9090"]);
    }
    c
}

fn pod_spec(images: [&str; 2], i: usize) -> Value {
    json!({
        "containers": [container("app", images[0], i, true), container("exporter", images[1], i, false)],
        "volumes": [{"name": "config", "configMap": {"name": format!("app-{i}-config"), "defaultMode": 420}}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {"fsGroup": 2000},
        "schedulerName": "default-scheduler"
    })
}

struct Workload {
    kind: &'static str,
    namespace: String,
    name: String,
}

fn deployment(i: usize, images: [&str; 2]) -> (Value, String) {
    let app = format!("svc-{i}");
    let uid = uid(i as u64 * 8 + 1);
    let mut template_labels = labels(&app, i);
    template_labels.as_object_mut().expect("labels").remove("helm.sh/chart");
    let spec = json!({
        "replicas": 2, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
        "selector": {"matchLabels": {"app": app, "app.kubernetes.io/instance": format!("{app}-prod")}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
        "template": {
            "metadata": {"labels": template_labels, "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}},
            "spec": pod_spec(images, i)
        }
    });
    let mut annotations = json!({
        "deployment.kubernetes.io/revision": "3", "meta.helm.sh/release-name": format!("{app}-prod"),
        "meta.helm.sh/release-namespace": namespace(i)
    });
    // What was applied (no defaults): the last-applied annotation and the manager's fields.
    let containers: Vec<Value> = spec["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|c| json!({"name": c["name"], "image": c["image"], "ports": c["ports"], "env": c["env"], "resources": c["resources"]}))
            .collect();
    let applied_spec = json!({"replicas": 2, "selector": spec["selector"], "template": {
        "metadata": {"labels": spec["template"]["metadata"]["labels"]}, "spec": {"containers": containers}}});
    if i % 3 == 0 {
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app, "namespace": namespace(i), "labels": labels(&app, i)}, "spec": applied_spec});
        annotations["kubectl.kubernetes.io/last-applied-configuration"] = json!(format!("{applied}\n"));
    }
    let status = json!({
        "observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
        "conditions": [
            {"type": "Available", "status": "True", "lastUpdateTime": time(1000), "lastTransitionTime": time(1000),
             "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "lastUpdateTime": time(900), "lastTransitionTime": time(100),
             "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{app}-{}\" has successfully progressed.", hex(i as u64, 10))}
        ]
    });
    let metadata_fields = json!({"f:metadata": fields_v1(&json!({"labels": labels(&app, i),
        "annotations": {"meta.helm.sh/release-name": "", "meta.helm.sh/release-namespace": ""}}))});
    let mut spec_fields = metadata_fields.clone();
    spec_fields["f:spec"] = fields_v1(&applied_spec);
    let managed_fields = json!([
        managed("helm", "apps/v1", 100, None, spec_fields),
        managed(
            "kube-controller-manager",
            "apps/v1",
            1000,
            Some("status"),
            json!({
                "f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}},
                "f:status": fields_v1(&status)
            })
        )
    ]);
    let object = json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": app, "namespace": namespace(i), "uid": uid, "generation": 3,
            "creationTimestamp": time(100), "labels": labels(&app, i), "annotations": annotations,
            "managedFields": managed_fields},
        "spec": spec, "status": status
    });
    (object, uid)
}

fn replica_set(i: usize, deployment: &Value) -> (Value, String) {
    let app = format!("svc-{i}");
    let hash = hex(i as u64, 10);
    let name = format!("{app}-{hash}");
    let uid = uid(i as u64 * 8 + 2);
    let mut spec = deployment["spec"].clone();
    let spec_map = spec.as_object_mut().expect("spec");
    for field in ["revisionHistoryLimit", "progressDeadlineSeconds", "strategy"] {
        spec_map.remove(field);
    }
    spec["selector"]["matchLabels"]["pod-template-hash"] = json!(hash);
    spec["template"]["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let mut labels = spec["template"]["metadata"]["labels"].clone();
    labels["pod-template-hash"] = json!(hash);
    let annotations = json!({"deployment.kubernetes.io/desired-replicas": "2", "deployment.kubernetes.io/max-replicas": "3",
        "deployment.kubernetes.io/revision": "3", "meta.helm.sh/release-name": format!("{app}-prod"),
        "meta.helm.sh/release-namespace": namespace(i)});
    let owner = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": app, "uid": deployment["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true}]);
    let status = json!({"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2, "observedGeneration": 1});
    let mut spec_fields =
        fields_v1(&json!({"metadata": {"annotations": annotations, "labels": labels, "ownerReferences": owner}}));
    spec_fields["f:spec"] = fields_v1(&json!({"replicas": 2, "selector": spec["selector"]}));
    let managed_fields = json!([
        managed("kube-controller-manager", "apps/v1", 900, None, spec_fields),
        managed("kube-controller-manager", "apps/v1", 1000, Some("status"), json!({"f:status": fields_v1(&status)}))
    ]);
    let object = json!({
        "kind": "ReplicaSet", "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": namespace(i), "uid": uid, "generation": 1, "creationTimestamp": time(900),
            "labels": labels, "annotations": annotations, "ownerReferences": owner, "managedFields": managed_fields},
        "spec": spec, "status": status
    });
    (object, name)
}

fn pod(seed: u64, ns: &str, name: &str, template: &Value, owner: Option<Value>, images: [&str; 2]) -> Value {
    let mut spec = template["spec"].clone();
    spec["nodeName"] = json!(format!("node-{}", seed % 40));
    spec["enableServiceLinks"] = json!(true);
    spec["preemptionPolicy"] = json!("PreemptLowerPriority");
    spec["priority"] = json!(0);
    spec["tolerations"] = json!([
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]);
    let token_volume = format!("kube-api-access-{}", &hex(seed, 5));
    spec["volumes"].as_array_mut().expect("volumes").push(json!({"name": token_volume, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}}));
    for c in spec["containers"].as_array_mut().expect("containers") {
        c["volumeMounts"].as_array_mut().expect("mounts").push(json!({"name": token_volume,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}));
    }
    let ip = format!("10.{}.{}.{}", 100 + seed % 100, (seed / 100) % 250, seed % 250 + 2);
    let host_ip = format!("192.168.{}.{}", seed % 40, 10 + seed % 40);
    let statuses: Vec<Value> = ["app", "exporter"]
        .iter()
        .zip(images)
        .enumerate()
        .map(|(n, (name, image))| {
            let (repo, _) = image.rsplit_once(':').expect("a tag");
            // As on a cluster: every node pulled the tag to the same digest, so the digest is
            // the image's; one pod in 50 still runs an older one (drift).
            let image_seed =
                image.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            let drifted = u64::from(seed % 50 == 0);
            json!({"name": name, "image": image, "imageID": format!("{repo}@sha256:{}", hex(image_seed + drifted, 64)),
                "containerID": format!("containerd://{}", hex(seed * 5 + n as u64, 64)),
                "ready": true, "started": true, "restartCount": 0, "lastState": {},
                "state": {"running": {"startedAt": time(1100)}}})
        })
        .collect();
    let status = json!({
        "phase": "Running", "qosClass": "Burstable", "startTime": time(1000),
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": time(1050)},
            {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": time(1000)},
            {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": time(1120)},
            {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": time(1120)},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": time(1000)}
        ],
        "containerStatuses": statuses
    });
    let mut metadata = json!({"name": name, "namespace": ns, "uid": uid(seed), "creationTimestamp": time(1000),
        "labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"]});
    let mut spec_fields = json!({"f:metadata": fields_v1(&json!({"labels": metadata["labels"], "annotations": metadata["annotations"]}))});
    if let Some(owner) = owner {
        metadata["generateName"] = json!(format!("{}-", name.rsplit_once('-').map_or(name, |(p, _)| p)));
        spec_fields["f:metadata"]["f:ownerReferences"] = fields_v1(&json!({"owner": owner}))["f:owner"].clone();
        metadata["ownerReferences"] = owner;
    }
    spec_fields["f:spec"] = fields_v1(&spec);
    metadata["managedFields"] = json!([
        managed("kube-controller-manager", "v1", 1000, None, spec_fields),
        managed("kubelet", "v1", 1120, Some("status"), json!({"f:status": fields_v1(&status)}))
    ]);
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status})
}

fn job(i: usize, images: [&str; 2]) -> Value {
    let name = format!("batch-{i}");
    let mut template = json!({"metadata": {"labels": labels(&name, i)}, "spec": pod_spec(images, i)});
    template["spec"]["restartPolicy"] = json!("OnFailure");
    let status = json!({"startTime": time(500), "completionTime": time(560), "succeeded": 1, "ready": 0, "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [{"type": "Complete", "status": "True", "lastProbeTime": time(560), "lastTransitionTime": time(560)}]});
    let spec = json!({"parallelism": 1, "completions": 1, "backoffLimit": 6, "completionMode": "NonIndexed",
        "suspend": false, "manualSelector": false, "podReplacementPolicy": "TerminatingOrFailed", "template": template});
    let mut spec_fields = json!({"f:metadata": fields_v1(&json!({"labels": labels(&name, i)}))});
    spec_fields["f:spec"] = fields_v1(&spec);
    json!({"kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": name, "namespace": namespace(i), "uid": uid(i as u64 * 8 + 5), "generation": 1,
            "creationTimestamp": time(500), "labels": labels(&name, i),
            "managedFields": [managed("helm", "batch/v1", 500, None, spec_fields),
                managed("kube-controller-manager", "batch/v1", 560, Some("status"), json!({"f:status": fields_v1(&status)}))]},
        "spec": spec, "status": status})
}

/// Serialized sizes of one kind's objects, bytes.
#[derive(Default)]
struct Sizes {
    count: usize,
    total: usize,
    min: usize,
    max: usize,
}

/// Counts `object`'s serialized size under its kind when it is one of `kinds` (and says so);
/// the first of each kind is written to `dir` to look at.
fn tally(sizes: &mut BTreeMap<&'static str, Sizes>, dir: &Path, kinds: &[&'static str], object: &Value) -> bool {
    let Some(kind) = kinds.iter().copied().find(|k| object["kind"] == *k) else { return false };
    let len = object.to_string().len();
    let entry = sizes.entry(kind).or_default();
    if entry.count == 0 {
        let sample = serde_json::to_string_pretty(object).expect("json");
        let _ = std::fs::write(dir.join(format!("sample-{kind}.json")), sample);
        entry.min = len;
    }
    entry.count += 1;
    entry.total += len;
    entry.min = entry.min.min(len);
    entry.max = entry.max.max(len);
    true
}

/// An inventory in its own API-server harness.
struct Inventory {
    api: ApiServer,
    kubeconfig: PathBuf,
    objects: usize,
    images: usize,
    /// What churn updates, Deployments and Pods interleaved.
    churned: Vec<Workload>,
    /// Average serialized size by kind, bytes.
    sizes: BTreeMap<&'static str, Sizes>,
}

impl Inventory {
    fn build(api: ApiServer, dir: &Path, name: &str, counts: (usize, usize, usize), registry: &str) -> Inventory {
        let (deployments, images, standalone) = counts;
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("inventory dir");
        let mut sizes: BTreeMap<&'static str, Sizes> = BTreeMap::new();
        let mut objects = 0;
        let mut used = HashSet::new();
        let mut deployments_list = Vec::new();
        let mut pods_list = Vec::new();
        let mut put = |object: Value, sizes: &mut BTreeMap<&'static str, Sizes>| {
            if tally(sizes, &dir, &["Deployment", "ReplicaSet", "Pod", "Job"], &object) {
                objects += 1;
            }
            api.apply(object);
        };
        for n in 0..NAMESPACES {
            put(
                json!({"kind": "Namespace", "metadata": {"name": namespace(n), "labels": {"kubernetes.io/metadata.name": namespace(n)}}}),
                &mut sizes,
            );
            put(
                json!({"kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace(n)}}),
                &mut sizes,
            );
        }
        put(
            json!({"kind": "Node", "metadata": {"name": "node-0", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
            "status": {"nodeInfo": {"operatingSystem": "linux", "architecture": "amd64"}}}),
            &mut sizes,
        );
        for i in 0..deployments {
            let refs = [image(registry, (2 * i) % images), image(registry, (2 * i + 1) % images)];
            used.extend(refs.iter().cloned());
            let images = [refs[0].as_str(), refs[1].as_str()];
            let (d, _) = deployment(i, images);
            let (rs, rs_name) = replica_set(i, &d);
            let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name, "uid": rs["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true}]);
            for p in 0..2u64 {
                let pod_name = format!("{rs_name}-{}", &hex(i as u64 * 2 + p, 5));
                let object = pod(
                    i as u64 * 8 + 3 + p,
                    &namespace(i),
                    &pod_name,
                    &rs["spec"]["template"],
                    Some(owner.clone()),
                    images,
                );
                pods_list.push(Workload { kind: "Pod", namespace: namespace(i), name: pod_name });
                put(object, &mut sizes);
            }
            deployments_list.push(Workload { kind: "Deployment", namespace: namespace(i), name: format!("svc-{i}") });
            put(d, &mut sizes);
            put(rs, &mut sizes);
        }
        for s in 0..standalone {
            let k = deployments * 2 + s;
            let refs = [image(registry, k % images), image(registry, (k + 1) % images)];
            used.extend(refs.iter().cloned());
            let images = [refs[0].as_str(), refs[1].as_str()];
            if s % 2 == 0 {
                let template = json!({"metadata": {"labels": labels(&format!("tool-{s}"), s), "annotations": {}}, "spec": pod_spec(images, s)});
                let name = format!("tool-{s}");
                put(pod((1 << 40) | s as u64, &namespace(s), &name, &template, None, images), &mut sizes);
            } else {
                put(job(s, images), &mut sizes);
            }
        }
        let mut churned = Vec::with_capacity(deployments_list.len() + pods_list.len());
        let mut pods = pods_list.into_iter();
        for d in deployments_list {
            churned.push(d);
            churned.extend(pods.next());
        }
        churned.extend(pods);
        let kubeconfig = api.kubeconfig(&dir);
        Inventory { api, kubeconfig, objects, images: used.len(), churned, sizes }
    }
}

/// One status-only update: conditions' times, readiness and the status manager's
/// managedFields time move; spec and metadata the workload is read from do not.
fn churn_one(inventory: &Inventory, n: u64) {
    let w = &inventory.churned[n as usize % inventory.churned.len()];
    let Some(mut object) = inventory.api.object(w.kind, &w.namespace, &w.name) else { return };
    let flip = n / inventory.churned.len() as u64 % 2 == 0;
    status_update(&mut object, 2000 + n, flip);
    inventory.api.apply(object);
}

/// What a status-only update changes in a Deployment or a Pod, at time `at`: readiness flips
/// one way (`flip`) or back.
fn status_update(object: &mut Value, at: u64, flip: bool) {
    match object["kind"].as_str() {
        Some("Deployment") => {
            let ready = if flip { 1 } else { 2 };
            object["status"]["readyReplicas"] = json!(ready);
            object["status"]["availableReplicas"] = json!(ready);
            object["status"]["conditions"][0]["lastUpdateTime"] = json!(time(at));
            object["status"]["conditions"][1]["lastUpdateTime"] = json!(time(at));
        }
        _ => {
            let ready = if flip { "False" } else { "True" };
            for c in [2, 3] {
                object["status"]["conditions"][c]["status"] = json!(ready);
                object["status"]["conditions"][c]["lastTransitionTime"] = json!(time(at));
            }
            object["status"]["containerStatuses"][0]["ready"] = json!(!flip);
            let restarts = object["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0);
            object["status"]["containerStatuses"][0]["restartCount"] = json!(restarts + u64::from(flip));
        }
    }
    if let Some(entries) = object["metadata"]["managedFields"].as_array_mut() {
        for entry in entries.iter_mut().filter(|e| e["subresource"] == "status") {
            entry["time"] = json!(time(at));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child process.

struct Variant {
    label: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// Where the runs' logs go (FOOTPRINT_OUT), created.
fn output_dir() -> PathBuf {
    let out = PathBuf::from(std::env::var("FOOTPRINT_OUT").unwrap_or_else(|_| "target/footprint".into()));
    std::fs::create_dir_all(&out).expect("output directory");
    out
}

/// Every variant's binary exists, or the bench stops saying how to build it.
fn require_binaries(variants: &[Variant]) {
    for v in variants {
        if !v.bin.is_file() {
            eprintln!(
                "footprint: no pullcheck binary at {} ({}); build it first (`cargo build --release --bin pullcheck`) or set PULLCHECK_BIN",
                v.bin.display(),
                v.label
            );
            std::process::exit(2);
        }
    }
}

/// The first `count` images really there (one per repository first, so its blobs are linked
/// there); the rest are absent.
async fn push_images(env: &Env, count: usize) {
    for k in 0..count {
        let reference = image(&env.anon.addr, k);
        let (repo, tag) = reference.split_once('/').expect("host/").1.rsplit_once(':').expect("tag");
        env.pusher.image(repo, tag, "amd64").await;
    }
}

fn variants() -> Vec<Variant> {
    if let Ok(list) = std::env::var("FOOTPRINT_VARIANTS") {
        return list
            .split(';')
            .filter(|e| !e.trim().is_empty())
            .map(|entry| {
                let mut words = entry.split_whitespace();
                let first = words.next().expect("an entry");
                let (label, bin) =
                    first.split_once('=').expect("FOOTPRINT_VARIANTS entries are label=path[ VAR=value…]");
                let env = words
                    .map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).expect("VAR=value"))
                    .collect();
                Variant { label: label.into(), bin: bin.into(), env }
            })
            .collect();
    }
    let current = std::env::var("PULLCHECK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pullcheck").to_string());
    let mut all = vec![Variant { label: "current".into(), bin: current.into(), env: vec![] }];
    if let Ok(baseline) = std::env::var("PULLCHECK_BASELINE_BIN") {
        all.push(Variant { label: "baseline".into(), bin: baseline.into(), env: vec![] });
    }
    all
}

struct Running {
    child: Child,
    /// The pullcheck process itself (under heaptrack, a child of the script).
    pid: u32,
    started: Instant,
    log: Arc<Mutex<Vec<String>>>,
    _home: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `schedule`: `--window` and `--tick`.
fn spawn(variant: &Variant, kubeconfig: &Path, heaptrack: Option<&Path>, schedule: [&str; 2]) -> Running {
    let home = tempfile::tempdir().expect("empty HOME");
    let mut command = match heaptrack {
        Some(out) => {
            let mut c = Command::new("heaptrack");
            c.arg("-o").arg(out).arg(&variant.bin);
            c
        }
        None => Command::new(&variant.bin),
    };
    support::process::cut_off(&mut command, std::env::vars_os().map(|(name, _)| name), home.path());
    command
        .args(["run", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--window", schedule[0], "--tick", schedule[1], "--health-addr", "127.0.0.1:0"])
        .env("OTEL_SDK_DISABLED", "true")
        .envs(variant.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", variant.bin.display()));
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let stderr = child.stderr.take().expect("stderr");
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut lines = lines.lock().expect("log");
            if lines.len() >= 400 {
                lines.drain(..200);
            }
            lines.push(line);
        }
    });
    let pid = match heaptrack {
        None => child.id(),
        Some(_) => {
            let bin = std::fs::canonicalize(&variant.bin).expect("binary path");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(pid) = descendant_running(child.id(), &bin) {
                    break pid;
                }
                assert!(Instant::now() < deadline, "heaptrack did not start {}", bin.display());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    Running { child, pid, started, log, _home: home }
}

/// A descendant of `root` whose executable is `exe`.
fn descendant_running(root: u32, exe: &Path) -> Option<u32> {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.entry(ppid).or_default().push(pid);
        }
    }
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in parents.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if std::fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|e| e == exe) {
                return Some(child);
            }
            queue.push(child);
        }
    }
    None
}

fn health_addr(running: &Running) -> Option<std::net::SocketAddr> {
    let logged = running.log.lock().expect("log").iter().find_map(|line| {
        let line = line.split_once("serving /healthz and /readyz")?.1;
        let rest = line.split_once("address=")?.1;
        rest.split(|c: char| c.is_whitespace() || c == '\u{1b}').next()?.parse().ok()
    });
    logged.or_else(|| support::process::listening(running.pid).into_iter().next())
}

fn ready(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: pullcheck\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let n = stream.read(&mut head).unwrap_or(0);
    head[..n].starts_with(b"HTTP/1.1 200")
}

/// The manifests the registry was asked for after byte `mark` of its access log: each request.
fn manifest_requests(log: &Path, mark: u64) -> Vec<String> {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.seek(std::io::SeekFrom::Start(mark)).and_then(|_| file.read_to_end(&mut bytes));
    }
    manifest_targets(&String::from_utf8_lossy(&bytes))
}

/// The manifests requested in access-log `text`, one per request.
fn manifest_targets(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split('"').nth(1)?.split(' ').nth(1))
        .filter(|target| target.contains("/manifests/"))
        .map(str::to_string)
        .collect()
}

/// The distinct manifests asked for since `mark`.
fn manifests_probed(log: &Path, mark: u64) -> usize {
    manifest_requests(log, mark).iter().collect::<HashSet<_>>().len()
}

#[derive(Default)]
struct Figures {
    objects: usize,
    lists: Option<Duration>,
    ready: Option<Duration>,
    first_probe: Option<Duration>,
    sync_cpu: f64,
    probed: usize,
    first_window: Option<Duration>,
    rss: u64,
    /// Of `rss`: anonymous (heap, stacks, allocator arenas) and file-backed (the binary's
    /// pages, shared libraries).
    rss_anon: u64,
    rss_file: u64,
    hwm: u64,
    small_objects: usize,
    small_rss: u64,
    /// RSS once settled: one window and the idle spell after sync (the allocator has
    /// returned what the sync and the first window left), full and small inventory alike.
    rss_settled: u64,
    small_rss_settled: u64,
    idle_cpu: f64,
    /// Manifest requests per second at the registry, idle and in churn: churn that changes
    /// no image must not make probes.
    idle_probes: f64,
    churn_probes: f64,
    churn_rate: f64,
    churn_cpu: f64,
    churn_secs: f64,
    rss_after: u64,
    hwm_after: u64,
    log_tail: Vec<String>,
}

/// Where the registry's probes show.
struct Probes {
    log: PathBuf,
}

/// Starts `variant` on `inventory`, waits for lists, `/readyz`, the first probe and the first
/// window's probes (each bounded), and fills the start-up figures.
fn start_and_sync(
    variant: &Variant,
    inventory: &Inventory,
    probes: &Probes,
    heaptrack: Option<&Path>,
    f: &mut Figures,
) -> Running {
    let mark = log_len(&probes.log);
    let window = format!("{WINDOW_SECS}s");
    let running = start_and_wait(variant, inventory, probes, heaptrack, f, [&window, "2s"], SYNC_DEADLINE);
    // The first window: every image probed once (or the window twice over).
    let window_deadline = Instant::now() + Duration::from_secs(WINDOW_SECS * 2 + 10);
    loop {
        f.probed = manifests_probed(&probes.log, mark);
        if f.probed >= inventory.images {
            f.first_window = Some(running.started.elapsed());
            break;
        }
        if Instant::now() >= window_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let the last answers land.
    std::thread::sleep(Duration::from_secs(3));
    f.objects = inventory.objects;
    f.rss = status_kib(running.pid, "VmRSS:");
    f.rss_anon = status_kib(running.pid, "RssAnon:");
    f.rss_file = status_kib(running.pid, "RssFile:");
    f.hwm = status_kib(running.pid, "VmHWM:");
    running
}

/// Starts `variant` on `inventory` with `schedule` (`--window`, `--tick`) and waits, at most
/// `deadline`, for the initial lists of every kind, `/readyz` and the first probe; fills those
/// figures and the CPU spent to there.
fn start_and_wait(
    variant: &Variant,
    inventory: &Inventory,
    probes: &Probes,
    heaptrack: Option<&Path>,
    f: &mut Figures,
    schedule: [&str; 2],
    deadline: Duration,
) -> Running {
    let mark = log_len(&probes.log);
    let mut running = spawn(variant, &inventory.kubeconfig, heaptrack, schedule);
    let resources: Vec<String> = pullcheck::sources::cluster::CLUSTER_KINDS
        .iter()
        .map(|kind| {
            let r = pullcheck::sources::cluster::api_resource(*kind);
            format!("{}/{}", r.api_version, r.plural)
        })
        .collect();
    let deadline = running.started + deadline;
    let mut addr = None;
    while Instant::now() < deadline {
        if f.lists.is_none() {
            let done = inventory.api.lists_completed_since(running.started);
            if resources.iter().all(|r| done.contains_key(r)) {
                f.lists =
                    resources.iter().filter_map(|r| done.get(r)).max().map(|at| at.duration_since(running.started));
            }
        }
        if addr.is_none() {
            addr = health_addr(&running);
        }
        if f.ready.is_none() && addr.is_some_and(ready) {
            f.ready = Some(running.started.elapsed());
        }
        if f.first_probe.is_none() && log_len(&probes.log) > mark {
            f.first_probe = Some(running.started.elapsed());
        }
        // Lists are waited for at most 30 s past readiness (a binary may watch other kinds).
        let lists_or_given_up =
            f.lists.is_some() || f.ready.is_some_and(|r| running.started.elapsed() > r + Duration::from_secs(30));
        if f.ready.is_some() && f.first_probe.is_some() && lists_or_given_up {
            break;
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("{} exited ({status}): {:#?}", variant.label, tail(&running));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f.sync_cpu = cpu_seconds(running.pid);
    running
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

fn tail(running: &Running) -> Vec<String> {
    let log = running.log.lock().expect("log");
    log.iter().rev().take(10).rev().cloned().collect()
}

/// Status-only updates at `rate` per second for `secs`, through the harness (so watch events
/// flow); returns the achieved rate.
fn churn(inventory: &Inventory, rate: u64, secs: u64, counter: &mut u64) -> f64 {
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while done < due {
            churn_one(inventory, *counter);
            *counter += 1;
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn measure(
    variant: &Variant,
    full: &Inventory,
    small: &Inventory,
    probes: &Probes,
    s: &Scenario,
    counter: &mut u64,
) -> Figures {
    let mut f = Figures::default();
    {
        let mut sf = Figures::default();
        let running = start_and_sync(variant, small, probes, None, &mut sf);
        f.small_objects = small.objects;
        f.small_rss = sf.rss;
        // Settled as the full inventory is below: one window, then the idle spell.
        std::thread::sleep(Duration::from_secs(WINDOW_SECS + s.idle_secs));
        f.small_rss_settled = status_kib(running.pid, "VmRSS:");
        drop(running);
    }
    let running = start_and_sync(variant, full, probes, None, &mut f);
    // The first window probes everything at once and the next starts later: idle is taken
    // one window on, when probes run at the rate churn will see, so that the difference
    // between the two is churn's own.
    std::thread::sleep(Duration::from_secs(WINDOW_SECS));
    let idle = Spell::start(running.pid, probes);
    std::thread::sleep(Duration::from_secs(s.idle_secs));
    (f.idle_cpu, f.idle_probes, _) = idle.rates(running.pid, probes);
    f.rss_settled = status_kib(running.pid, "VmRSS:");
    let in_churn = Spell::start(running.pid, probes);
    f.churn_rate = churn(full, s.churn_rate, s.churn_secs, counter);
    (f.churn_cpu, f.churn_probes, f.churn_secs) = in_churn.rates(running.pid, probes);
    f.rss_after = status_kib(running.pid, "VmRSS:");
    f.hwm_after = status_kib(running.pid, "VmHWM:");
    f.log_tail = tail(&running);
    f
}

/// A spell of the child's life, from its start on: what it cost.
struct Spell {
    cpu: f64,
    mark: u64,
    started: Instant,
}

impl Spell {
    fn start(pid: u32, probes: &Probes) -> Spell {
        Spell { cpu: cpu_seconds(pid), mark: log_len(&probes.log), started: Instant::now() }
    }

    /// Over the spell so far: CPU (of a core), manifest requests at the registry per second,
    /// and its length in seconds.
    fn rates(&self, pid: u32, probes: &Probes) -> (f64, f64, f64) {
        let secs = self.started.elapsed().as_secs_f64();
        let requests = manifest_requests(&probes.log, self.mark).len() as f64;
        ((cpu_seconds(pid) - self.cpu) / secs, requests / secs, secs)
    }
}

struct Heap {
    peak: String,
    at_end: String,
    consumers: Vec<String>,
    /// What was still allocated when the process was killed: the steady heap by site.
    in_use: Vec<String>,
    file: PathBuf,
}

/// A binary under heaptrack on the full inventory, a shorter churn, then killed: what
/// heaptrack counts as leaked is the heap in use at that moment.
fn heaptrack_run(
    variant: &Variant,
    full: &Inventory,
    probes: &Probes,
    out: &Path,
    churn_secs: u64,
    rate: u64,
    counter: &mut u64,
) -> Option<Heap> {
    let prefix = out.join(format!("heaptrack-{}", variant.label));
    for old in std::fs::read_dir(out).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with(&format!("heaptrack-{}.", variant.label)) {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let mut f = Figures::default();
    let mut running = start_and_sync(variant, full, probes, Some(&prefix), &mut f);
    churn(full, rate, churn_secs, counter);
    let _ = Command::new("kill").args(["-KILL", &running.pid.to_string()]).status();
    // heaptrack writes its file once the process is gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && running.child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    // This variant's file (`heaptrack-<label>.zst`), not another label that starts alike.
    let data = std::fs::read_dir(out).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| {
            n.to_string_lossy().starts_with(&format!("heaptrack-{}.", variant.label))
                && !n.to_string_lossy().ends_with(".txt")
        })
    })?;
    let printed = Command::new("heaptrack_print")
        .arg("-f")
        .arg(&data)
        .args([
            "--print-peaks=1",
            "--print-leaks=1",
            "--print-allocators=0",
            "--print-temporary=0",
            "--peak-limit=12",
            "--sub-peak-limit=3",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&printed.stdout).into_owned();
    let file = out.join(format!("heaptrack-{}.txt", variant.label));
    std::fs::write(&file, &text).ok()?;
    let summary = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_else(|| "?".into())
    };
    Some(Heap {
        peak: summary("peak heap memory consumption:"),
        at_end: summary("total memory leaked:"),
        consumers: top_sites(&text, "PEAK MEMORY CONSUMERS"),
        in_use: top_sites(&text, "MEMORY LEAKS"),
        file,
    })
}

/// A section of heaptrack_print's report (PEAK MEMORY CONSUMERS, MEMORY LEAKS), one line per
/// site: the amount, the allocating function and the frames that say who asked (runtime and
/// future plumbing left out), demangled enough to read.
fn top_sites(text: &str, title: &str) -> Vec<String> {
    let Some(section) = text.split(&format!("\n{title}\n")).nth(1) else { return vec![] };
    // Sections end at the next all-capitals title.
    let section: Vec<&str> = section
        .lines()
        .take_while(|l| !(l.len() > 3 && l.chars().all(|c| c.is_ascii_uppercase() || c == ' ')))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < section.len() && out.len() < 12 {
        let head = section[i];
        let top = !head.starts_with(' ')
            && (head.contains("peak memory consumed over") || head.contains(" leaked over "))
            && head.ends_with("from");
        if !top {
            i += 1;
            continue;
        }
        let amount = head.split_whitespace().next().unwrap_or("?").to_string();
        let allocator = section.get(i + 1).map(|l| readable(l.trim())).unwrap_or_default();
        // The first (largest) backtrace under it, and what it alone holds: a leaf allocator
        // (a hash table's) sums every caller.
        let mut frames = Vec::new();
        let mut j = i + 2;
        while j < section.len() && !section[j].ends_with("from:") {
            j += 1;
        }
        let largest = section.get(j).and_then(|l| l.split_whitespace().next()).unwrap_or("?").to_string();
        j += 1;
        while j < section.len() && section[j].starts_with("    ") {
            let frame = section[j].trim();
            let plumbing = [
                "0x",
                "tokio::runtime",
                "std::",
                "core::",
                "alloc::",
                "_<futures_util",
                "_<core::",
                "__rust",
                "_<alloc::",
                "clone3",
                "start_thread",
                "_<std::",
            ];
            if !section[j].starts_with("      ") && !plumbing.iter().any(|p| readable(frame).starts_with(p)) {
                frames.push(readable(frame));
            }
            j += 1;
        }
        let mut who: Vec<String> = frames.iter().take(2).cloned().collect();
        if let Some(own) = frames.iter().skip(2).find(|f| f.contains("pullcheck::")) {
            who.push(format!("… {own}"));
        }
        out.push(format!("{amount:>8} {allocator} ({largest} of it) <- {}", who.join(" <- ")));
        i = j;
    }
    out
}

/// Rust's legacy mangling escapes and hashes, as heaptrack_print leaves them, made readable.
fn readable(symbol: &str) -> String {
    let mut s = symbol.to_string();
    for (from, to) in [
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$u20$", " "),
        ("$C$", ","),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("$RF$", "&"),
        ("$BP$", "*"),
        ("..", "::"),
    ] {
        s = s.replace(from, to);
    }
    // `::h0123456789abcdef` at the end.
    if let Some((name, hash)) = s.rsplit_once("::h") {
        if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) {
            s = name.to_string();
        }
    }
    s
}

/// `Pod 9.1 KiB (8.6–9.2), …`: average, smallest and largest serialized size by kind.
fn sizes_line(sizes: &BTreeMap<&'static str, Sizes>) -> String {
    sizes
        .iter()
        .map(|(k, z)| {
            format!(
                "{k} {:.1} KiB ({:.1}–{:.1})",
                z.total as f64 / z.count.max(1) as f64 / 1024.0,
                z.min as f64 / 1024.0,
                z.max as f64 / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn main() {
    if std::env::var("FOOTPRINT_SCENARIO").is_ok_and(|s| s == "limits") {
        return limits::main();
    }
    let s = Scenario {
        deployments: env_or("FOOTPRINT_DEPLOYMENTS", 10_000),
        images: env_or("FOOTPRINT_IMAGES", 5_000),
        standalone: env_or("FOOTPRINT_STANDALONE", 500),
        small_percent: env_or("FOOTPRINT_SMALL_PERCENT", 10),
        pushed: env_or("FOOTPRINT_PUSHED", 100),
        idle_secs: env_or("FOOTPRINT_IDLE_SECS", 30),
        churn_secs: env_or("FOOTPRINT_CHURN_SECS", 600),
        churn_rate: env_or("FOOTPRINT_CHURN_RATE", 200),
    };
    // Only read a saved heaptrack_print report again (its top sites), and stop.
    if let Ok(report) = std::env::var("FOOTPRINT_HEAPTRACK_REPORT") {
        let text = std::fs::read_to_string(&report).expect("a heaptrack_print report");
        for title in ["PEAK MEMORY CONSUMERS", "MEMORY LEAKS"] {
            println!("{title}:");
            for site in top_sites(&text, title) {
                println!("  {site}");
            }
        }
        return;
    }
    let variants = variants();
    // `1`: the first variant; else the labels named (`glibc,page100`).
    let heaptracked: Vec<String> = match std::env::var("FOOTPRINT_HEAPTRACK").unwrap_or_default().as_str() {
        "" | "0" => vec![],
        "1" => vec![variants[0].label.clone()],
        labels => labels.split(',').map(str::to_string).collect(),
    };
    let heaptrack_churn: u64 = env_or("FOOTPRINT_HEAPTRACK_CHURN_SECS", 60);
    let out = output_dir();
    require_binaries(&variants);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let env = Env::start().await;
        let registry_host = env.anon.addr.clone();
        let setup = Instant::now();
        push_images(&env, s.pushed.min(s.images)).await;
        let pushed_in = setup.elapsed();
        let small_deployments = (s.deployments * s.small_percent / 100).max(1);
        let small_standalone = s.standalone * s.small_percent / 100;
        let (full_api, small_api) = (ApiServer::start().await, ApiServer::start().await);
        let (full, small) = tokio::task::block_in_place(|| {
            let dir = out.as_path();
            let full = Inventory::build(full_api, dir, "full", (s.deployments, s.images, s.standalone), &registry_host);
            let small =
                Inventory::build(small_api, dir, "small", (small_deployments, s.images, small_standalone), &registry_host);
            (full, small)
        });
        // Long churn: keep the last 50,000 changes, as etcd compacts.
        full.api.keep_history(50_000);
        let probes = Probes { log: env.anon.access_log().to_path_buf() };
        println!(
            "footprint: {} objects ({} Deployments, {} ReplicaSets, {} Pods, {} Jobs), {} images ({} pushed in {:.1} s); small inventory {} objects; set up in {:.1} s",
            full.objects,
            full.sizes.get("Deployment").map_or(0, |e| e.count),
            full.sizes.get("ReplicaSet").map_or(0, |e| e.count),
            full.sizes.get("Pod").map_or(0, |e| e.count),
            full.sizes.get("Job").map_or(0, |e| e.count),
            full.images,
            s.pushed.min(s.images),
            pushed_in.as_secs_f64(),
            small.objects,
            setup.elapsed().as_secs_f64()
        );
        println!("  average object sizes: {}", sizes_line(&full.sizes));
        println!(
            "  pullcheck run --window {WINDOW_SECS}s --tick 2s, OTEL_SDK_DISABLED=true; idle {} s, churn {} status-only updates/s for {} s",
            s.idle_secs, s.churn_rate, s.churn_secs
        );
        let mut counter = 0u64;
        let mut results = Vec::new();
        for v in &variants {
            eprintln!("footprint: measuring {} ({})", v.label, v.bin.display());
            let f = tokio::task::block_in_place(|| measure(v, &full, &small, &probes, &s, &mut counter));
            results.push(f);
        }
        let heap_runs: Vec<(&Variant, Result<Heap, String>)> = variants
            .iter()
            .filter(|v| heaptracked.contains(&v.label))
            .map(|v| {
                if Command::new("heaptrack_print").arg("--version").output().is_err() {
                    return (v, Err("heaptrack is not installed (apt-get install -y heaptrack)".to_string()));
                }
                eprintln!("footprint: {} under heaptrack", v.label);
                let heap = tokio::task::block_in_place(|| {
                    heaptrack_run(v, &full, &probes, &out, heaptrack_churn, s.churn_rate, &mut counter)
                });
                (v, heap.ok_or_else(|| "heaptrack gave no result".to_string()))
            })
            .collect();
        print_table(&variants, &results, &s);
        if heap_runs.is_empty() {
            println!("\nlive heap: skipped (FOOTPRINT_HEAPTRACK=1 runs {} under heaptrack)", variants[0].label);
        }
        for (v, heap) in heap_runs {
            let heap = match heap {
                Ok(heap) => heap,
                Err(why) => {
                    println!("\nlive heap of {}: skipped: {why}", v.label);
                    continue;
                }
            };
            println!(
                "\nlive heap of {} under heaptrack ({heaptrack_churn} s churn): peak {}, in use at the end {} (report: {})",
                v.label,
                heap.peak,
                heap.at_end,
                heap.file.display()
            );
            println!("  peak memory consumers:");
            for c in heap.consumers {
                println!("    {c}");
            }
            println!("  in use at the end, by site:");
            for c in heap.in_use {
                println!("    {c}");
            }
        }
    });
}

fn print_table(variants: &[Variant], results: &[Figures], s: &Scenario) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        rows.push((name.to_string(), results.iter().map(cell).collect()));
    };
    row("objects watched", &|f| f.objects.to_string());
    row("initial lists served", &|f| secs(f.lists));
    row("/readyz 200", &|f| secs(f.ready));
    row("first probe", &|f| secs(f.first_probe));
    row("CPU to /readyz", &|f| format!("{:.2} s", f.sync_cpu));
    row("first window probed", &|f| match f.first_window {
        Some(_) => secs(f.first_window),
        None => format!("{} images only", f.probed),
    });
    row("RSS after sync", &|f| mib(f.rss));
    row("  anonymous / file-backed", &|f| format!("{} / {}", mib(f.rss_anon), mib(f.rss_file)));
    row("peak RSS (VmHWM)", &|f| mib(f.hwm));
    row("RSS, small inventory", &|f| format!("{} ({} obj.)", mib(f.small_rss), f.small_objects));
    row("marginal bytes/object", &|f| {
        let objects = f.objects.saturating_sub(f.small_objects).max(1);
        format!("{:.0} B", (f.rss as f64 - f.small_rss as f64) * 1024.0 / objects as f64)
    });
    // A Deployment comes with its ReplicaSet and two Pods here.
    let per_deployment = |full: u64, small: u64, f: &Figures| {
        let objects = f.objects.saturating_sub(f.small_objects).max(1) as f64;
        format!("{:.0} B", (full as f64 - small as f64) * 1024.0 / (objects / 4.0))
    };
    row("marginal bytes/Deployment", &|f| per_deployment(f.rss, f.small_rss, f));
    row("RSS settled (window + idle on)", &|f| format!("{} / {} small", mib(f.rss_settled), mib(f.small_rss_settled)));
    row("  marginal bytes/Deployment", &|f| per_deployment(f.rss_settled, f.small_rss_settled, f));
    row("CPU idle (of a core)", &|f| format!("{:.2} %", f.idle_cpu * 100.0));
    row("churn updates/s", &|f| format!("{:.0} for {:.0} s", f.churn_rate, f.churn_secs));
    row("CPU in churn", &|f| format!("{:.2} %", f.churn_cpu * 100.0));
    row("manifest requests/s idle / churn", &|f| format!("{:.0} / {:.0}", f.idle_probes, f.churn_probes));
    row("CPU for churn (- idle)", &|f| format!("{:.2} %", (f.churn_cpu - f.idle_cpu) * 100.0));
    row("RSS after churn", &|f| mib(f.rss_after));
    row("RSS growth in churn", &|f| format!("{:+.1} %", (f.rss_after as f64 / f.rss.max(1) as f64 - 1.0) * 100.0));
    row("peak RSS after churn", &|f| mib(f.hwm_after));
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let cols: Vec<usize> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| rows.iter().map(|(_, c)| c[i].len()).chain([v.label.len()]).max().unwrap_or(0))
        .collect();
    println!();
    print!("{:width$}", "");
    for (v, w) in variants.iter().zip(&cols) {
        print!("  {:>w$}", v.label);
    }
    println!();
    for (name, cells) in &rows {
        print!("{name:width$}");
        for (c, w) in cells.iter().zip(&cols) {
            print!("  {c:>w$}");
        }
        println!();
    }
    println!("(churn {} s at {} updates/s asked)", s.churn_secs, s.churn_rate);
    for (v, f) in variants.iter().zip(results) {
        if f.ready.is_none() || f.first_probe.is_none() {
            println!("{} did not get ready or probe; its last log lines: {:#?}", v.label, f.log_tail);
        }
    }
}
