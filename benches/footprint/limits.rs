//! Issue 22's scenario, `FOOTPRINT_SCENARIO=limits`: `pullcheck run` at Kubernetes' published
//! limits on one small replica, side by side with a baseline binary, every figure next to its
//! goal. The harness serves, with the bodies the footprint scenario generates (managedFields,
//! Helm labels, statuses, owner references):
//!
//! - 50,000 Deployments over 50 namespaces, 2 containers each, 25,000 unique images; 3
//!   ReplicaSets per Deployment (the current one with 3 replicas, two old ones at 0) and the
//!   current one's 150,000 Pods, spread over the nodes;
//! - 5,000 Nodes (one in five arm64, the rest amd64) with their labels (`kubernetes.io/arch`,
//!   `kubernetes.io/os`, zone, instance type), capacity, conditions, `nodeInfo` and images;
//! - 2,000 CronJobs, each with 2 finished Jobs and their succeeded Pods;
//! - 500 `kubernetes.io/dockerconfigjson` Secrets, each named by a ServiceAccount's
//!   `imagePullSecrets`, the workloads running as those ServiceAccounts.
//!
//! Per binary: a bare paged list (limit=500, every kind `run` lists plus Nodes, one kind after
//! another as `run`'s watchers list them, and again all at once, each page scanned for its
//! `continue`) against the same harness first; then `run` with its default schedule
//! (`--window 10m --tick 15s`): time to the initial lists and to `/readyz`, resident memory
//! after sync; then for the churn spell (10 minutes, over the first window): 1,000 Pod status
//! updates/s, 20 rollouts/min (a new ReplicaSet, the previous one scaled to 0 and its Pods
//! replaced, the oldest deleted), a bookmark on every watch each minute, a relist forced every
//! 5 minutes (every version compacted away: open watches get 410 Gone). CPU in churn, RSS by phase and the peak; the first window's batches as the registry
//! saw them (its access log, read live every 100 ms: the distinct manifests requested in each
//! tick-long bucket from the first probe on; the goal's figure counts each key's first probe
//! only, the retries that confirm an absent image or follow a transient failure shown beside it).
//! Then `check -A` against the same cluster (wall time, peak RSS) and `check -f` over 5,000
//! images (user + sys per probe), both under GNU `/usr/bin/time`.
//!
//! ```text
//! FOOTPRINT_SCENARIO=limits PULLCHECK_BASELINE_BIN=/path/to/old/pullcheck cargo bench --bench footprint
//! FOOTPRINT_SCENARIO=limits LIMITS_SCALE=0.2 cargo bench --bench footprint   # a fifth of it
//! ```
//!
//! Env (defaults in brackets; counts and rates are the full scale's times LIMITS_SCALE [1],
//! unless set themselves): LIMITS_DEPLOYMENTS [50000], LIMITS_IMAGES [25000], LIMITS_REPLICAS
//! [3, at most 16], LIMITS_NODES [5000], LIMITS_CRONJOBS [2000], LIMITS_SECRETS [500, a
//! multiple of the 50 namespaces], LIMITS_POD_UPDATES [1000 per s], LIMITS_ROLLOUTS [20 per
//! min]; not scaled: LIMITS_PUSHED [100], LIMITS_WINDOW_SECS [600], LIMITS_TICK_SECS [15],
//! LIMITS_CHURN_SECS [600], LIMITS_RELIST_SECS [300], LIMITS_BOOKMARK_SECS [60],
//! LIMITS_HISTORY [50000 changes kept, as etcd compacts], LIMITS_CHECK_IMAGES [5000],
//! LIMITS_LIST_PAGE [500], LIMITS_SYNC_DEADLINE_SECS [1200]. The binaries as for the footprint
//! scenario (PULLCHECK_BIN, PULLCHECK_BASELINE_BIN, FOOTPRINT_VARIANTS) and FOOTPRINT_OUT.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::apiserver::ApiServer;
use super::support::process::{cpu_seconds, status_kib};
use super::support::{self, Env};
use super::{
    Figures, Inventory, NAMESPACES, Probes, Sizes, Variant, deployment, env_or, fields_v1, hex, image, job, log_len,
    managed, manifest_targets, manifests_probed, mib, namespace, output_dir, pod, push_images, replica_set,
    require_binaries, secs, sizes_line, start_and_wait, status_update, tail, tally, time, uid, variants,
};

/// The sizes and rates of the scenario.
struct Limits {
    deployments: usize,
    images: usize,
    replicas: usize,
    nodes: usize,
    cronjobs: usize,
    secrets: usize,
    pod_updates: u64,
    rollouts_per_min: u64,
    pushed: usize,
    window_secs: u64,
    tick_secs: u64,
    churn_secs: u64,
    relist_secs: u64,
    bookmark_secs: u64,
    history: usize,
    check_images: usize,
    list_page: usize,
    sync_deadline: Duration,
}

impl Limits {
    fn from_env() -> Limits {
        let scale: f64 = env_or("LIMITS_SCALE", 1.0);
        let scaled = |name: &str, full: usize| env_or(name, ((full as f64 * scale).round() as usize).max(1));
        Limits {
            deployments: scaled("LIMITS_DEPLOYMENTS", 50_000),
            images: scaled("LIMITS_IMAGES", 25_000),
            replicas: env_or("LIMITS_REPLICAS", 3usize).clamp(1, 16),
            nodes: scaled("LIMITS_NODES", 5_000),
            cronjobs: scaled("LIMITS_CRONJOBS", 2_000),
            secrets: scaled("LIMITS_SECRETS", 500) / NAMESPACES * NAMESPACES,
            pod_updates: scaled("LIMITS_POD_UPDATES", 1_000) as u64,
            rollouts_per_min: scaled("LIMITS_ROLLOUTS", 20) as u64,
            pushed: env_or("LIMITS_PUSHED", 100),
            window_secs: env_or("LIMITS_WINDOW_SECS", 600),
            tick_secs: env_or("LIMITS_TICK_SECS", 15),
            churn_secs: env_or("LIMITS_CHURN_SECS", 600),
            relist_secs: env_or("LIMITS_RELIST_SECS", 300),
            bookmark_secs: env_or("LIMITS_BOOKMARK_SECS", 60),
            history: env_or("LIMITS_HISTORY", 50_000),
            check_images: env_or("LIMITS_CHECK_IMAGES", 5_000),
            list_page: env_or("LIMITS_LIST_PAGE", 500),
            sync_deadline: Duration::from_secs(env_or("LIMITS_SYNC_DEADLINE_SECS", 1200)),
        }
    }

    /// The ServiceAccounts (and pull secrets) per namespace.
    fn accounts(&self) -> usize {
        self.secrets / NAMESPACES
    }

    /// The ServiceAccount workload `i` runs as: one naming a pull secret when there are any.
    fn account_of(&self, i: usize) -> String {
        match self.accounts() {
            0 => "default".to_string(),
            n => format!("app-{}", (i / NAMESPACES) % n),
        }
    }

    fn deployment_images(&self, registry: &str, i: usize) -> [String; 2] {
        [image(registry, (2 * i) % self.images), image(registry, (2 * i + 1) % self.images)]
    }
}

// ---------------------------------------------------------------------------------------------
// Objects.

/// A node as the kubelet and the node controller write it.
fn node(n: usize, registry: &str, pool: usize) -> Value {
    let name = format!("node-{n}");
    let arch = if n % 5 == 4 { "arm64" } else { "amd64" };
    let zone = format!("eu-west-1{}", ["a", "b", "c"][n % 3]);
    let labels = json!({
        "beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": if arch == "arm64" { "m7g.2xlarge" } else { "m7i.2xlarge" },
        "topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": zone
    });
    let annotations = json!({"node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true"});
    let capacity = json!({"cpu": "8", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        "memory": "32386544Ki", "pods": "110"});
    let ip = format!("192.168.{}.{}", n / 250, n % 250 + 2);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "lastHeartbeatTime": time(5000 + n as u64 % 60),
            "lastTransitionTime": time(100), "reason": reason, "message": message})
    };
    // The images the kubelet reports as present (real nodes list up to 50).
    let images: Vec<Value> = (0..20)
        .map(|k| {
            let reference = image(registry, (n * 7 + k * 131) % pool.max(1));
            let (repo, _) = reference.rsplit_once(':').expect("a tag");
            json!({"names": [format!("{repo}@sha256:{}", hex((n * 20 + k) as u64, 64)), reference],
                "sizeBytes": 10_000_000 + (n * 20 + k) * 4096})
        })
        .collect();
    let status = json!({
        "capacity": capacity, "allocatable": {"cpu": "7910m", "ephemeral-storage": "95551679124", "hugepages-1Gi": "0",
            "hugepages-2Mi": "0", "memory": "31235568Ki", "pods": "110"},
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
        ],
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": hex(n as u64, 32), "systemUUID": uid(n as u64 + (5 << 40)), "bootID": uid(n as u64 + (6 << 40)),
            "kernelVersion": "6.1.112-124.190.amzn2023.x86_64", "osImage": "Amazon Linux 2023.6.20241111",
            "containerRuntimeVersion": "containerd://1.7.23", "kubeletVersion": "v1.33.5", "kubeProxyVersion": "v1.33.5",
            "operatingSystem": "linux", "architecture": arch},
        "images": images
    });
    let spec = json!({"podCIDR": format!("10.{}.{}.0/24", 100 + n / 250, n % 250),
        "podCIDRs": [format!("10.{}.{}.0/24", 100 + n / 250, n % 250)], "providerID": format!("aws:///{zone}/i-{}", hex(n as u64, 17))});
    let managed_fields = json!([
        managed(
            "kubelet",
            "v1",
            100,
            None,
            fields_v1(&json!({"metadata": {"annotations": annotations, "labels": labels}}))
        ),
        managed("kube-controller-manager", "v1", 110, None, json!({"f:spec": fields_v1(&spec)})),
        managed("kubelet", "v1", 5000, Some("status"), json!({"f:status": fields_v1(&status)}))
    ]);
    json!({"kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": uid(n as u64 + (7 << 40)), "creationTimestamp": time(100), "labels": labels,
            "annotations": annotations, "managedFields": managed_fields},
        "spec": spec, "status": status})
}

/// Deployment `i` at rollout `generation` (0: as created), with `replicas` Pods running as
/// its ServiceAccount.
fn limits_deployment(l: &Limits, i: usize, images: [&str; 2], generation: u32) -> Value {
    let (mut d, _) = deployment(i, images);
    let replicas = l.replicas;
    d["spec"]["replicas"] = json!(replicas);
    for field in ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"] {
        d["status"][field] = json!(replicas);
    }
    let account = l.account_of(i);
    d["spec"]["template"]["spec"]["serviceAccountName"] = json!(account);
    d["spec"]["template"]["spec"]["serviceAccount"] = json!(account);
    d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!((generation + 3).to_string());
    if generation > 0 {
        // `kubectl rollout restart`: a new template, the same images.
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
            json!(time(3000 + u64::from(generation)));
    }
    d
}

/// Deployment `i`'s ReplicaSet of `generation`, as a seed for its hash and uid.
fn replica_set_seed(i: usize, generation: u32) -> u64 {
    (3 << 56) | ((i as u64) << 32) | u64::from(generation)
}

/// The pod-template hash of Deployment `i`'s ReplicaSet of `generation`.
fn template_hash(i: usize, generation: u32) -> String {
    hex(replica_set_seed(i, generation), 10)
}

fn replica_set_name(i: usize, generation: u32) -> String {
    format!("svc-{i}-{}", template_hash(i, generation))
}

/// Deployment `d`'s (number `i`) ReplicaSet of `generation` with `replicas`.
fn generation_replica_set(i: usize, generation: u32, d: &Value, replicas: usize) -> Value {
    let (mut rs, _) = replica_set(i, d);
    let hash = template_hash(i, generation);
    rs["metadata"]["name"] = json!(replica_set_name(i, generation));
    rs["metadata"]["uid"] = json!(uid(replica_set_seed(i, generation)));
    rs["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(generation.wrapping_add(3).to_string());
    rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] = json!(hash);
    rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    rs["spec"]["replicas"] = json!(replicas);
    for field in ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
        rs["status"][field] = json!(replicas);
    }
    rs
}

/// Distinct per Pod, below 2^61 (footprint's `pod` multiplies it by 5). Pods belong to
/// generations counted from 0 up, well below 2^28.
fn pod_seed(i: usize, generation: u32, p: usize) -> u64 {
    (1 << 56) | ((i as u64) << 32) | (u64::from(generation & 0x0FFF_FFFF) << 4) | p as u64
}

fn replica_pod_name(i: usize, generation: u32, p: usize) -> String {
    format!("{}-{}", replica_set_name(i, generation), hex(pod_seed(i, generation, p), 5))
}

/// Pod `p` of ReplicaSet `rs` (Deployment `i`, `generation`), on one of `nodes`.
fn replica_pod(i: usize, generation: u32, p: usize, rs: &Value, images: [&str; 2], nodes: usize) -> Value {
    let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
        "uid": rs["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    let seed = pod_seed(i, generation, p);
    let name = replica_pod_name(i, generation, p);
    let mut pod = pod(seed, &namespace(i), &name, &rs["spec"]["template"], Some(owner), images);
    pod["spec"]["nodeName"] = json!(format!("node-{}", seed % nodes.max(1) as u64));
    pod
}

/// CronJob `c` with its finished Jobs and their succeeded Pods.
fn cron_job(l: &Limits, c: usize, images: [&str; 2]) -> Vec<Value> {
    let name = format!("cron-{c}");
    let ns = namespace(c);
    let cron_uid = uid((4 << 40) | c as u64);
    let template_job = job(c, images);
    let status = json!({"lastScheduleTime": time(4200), "lastSuccessfulTime": time(4260)});
    let mut job_template =
        json!({"metadata": {"labels": template_job["metadata"]["labels"]}, "spec": template_job["spec"]});
    job_template["spec"]["template"]["spec"]["serviceAccountName"] = json!(l.account_of(c));
    let spec = json!({"schedule": "*/30 * * * *", "concurrencyPolicy": "Forbid", "suspend": false,
        "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1, "jobTemplate": job_template});
    let cron = json!({"kind": "CronJob", "apiVersion": "batch/v1",
        "metadata": {"name": name, "namespace": ns, "uid": cron_uid, "generation": 1, "creationTimestamp": time(100),
            "labels": template_job["metadata"]["labels"],
            "managedFields": [managed("helm", "batch/v1", 100, None, json!({"f:spec": fields_v1(&spec)})),
                managed("kube-controller-manager", "batch/v1", 4260, Some("status"), json!({"f:status": fields_v1(&status)}))]},
        "spec": spec, "status": status});
    let mut out = vec![cron];
    for k in 0..2u64 {
        let job_name = format!("{name}-{}", 29_000_000 + k * 30);
        let mut job = template_job.clone();
        job["spec"]["template"] = job_template["spec"]["template"].clone();
        job["metadata"]["name"] = json!(job_name);
        job["metadata"]["uid"] = json!(uid((4 << 40) | ((c as u64) << 4) | (k + 1)));
        job["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": name,
            "uid": cron_uid, "controller": true, "blockOwnerDeletion": true}]);
        let owner = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"],
            "controller": true, "blockOwnerDeletion": true}]);
        let mut template = job["spec"]["template"].clone();
        template["metadata"]["annotations"] = json!({});
        let seed = (2 << 40) | ((c as u64) << 4) | k;
        let pod_name = format!("{job_name}-{}", hex(seed, 5));
        let mut pod = pod(seed, &ns, &pod_name, &template, Some(owner), images);
        pod["spec"]["nodeName"] = json!(format!("node-{}", seed % l.nodes.max(1) as u64));
        pod["status"]["phase"] = json!("Succeeded");
        for status in pod["status"]["containerStatuses"].as_array_mut().expect("statuses") {
            status["ready"] = json!(false);
            status["started"] = json!(false);
            status["state"] = json!({"terminated": {"exitCode": 0, "reason": "Completed",
                "startedAt": time(4200), "finishedAt": time(4250), "containerID": status["containerID"]}});
        }
        out.push(job);
        out.push(pod);
    }
    out
}

/// The cluster and where each Deployment's rollouts are.
struct Cluster {
    inventory: Inventory,
    registry: String,
    /// Each Deployment's current rollout.
    generations: Mutex<Vec<u32>>,
    /// The bench process's resident memory once the harness holds everything, KiB.
    harness_rss: u64,
    /// Serialized bytes stored.
    bytes: usize,
}

fn build(api: ApiServer, out: &Path, l: &Limits, registry: &str) -> Cluster {
    let dir = out.join("limits");
    std::fs::create_dir_all(&dir).expect("inventory dir");
    let mut sizes: BTreeMap<&'static str, Sizes> = BTreeMap::new();
    let mut objects = 0;
    let mut bytes = 0;
    let mut used = HashSet::new();
    let kinds = ["Deployment", "ReplicaSet", "Pod", "Job", "CronJob", "Node", "ServiceAccount"];
    let mut put = |object: Value| {
        objects += 1;
        if tally(&mut sizes, &dir, &kinds, &object) {
            bytes += object.to_string().len();
        }
        api.apply(object);
    };
    for n in 0..NAMESPACES {
        put(
            json!({"kind": "Namespace", "metadata": {"name": namespace(n), "labels": {"kubernetes.io/metadata.name": namespace(n)}}}),
        );
        put(json!({"kind": "ServiceAccount", "metadata": {"name": "default", "namespace": namespace(n)}}));
    }
    // The secret's credentials are made up: the anonymous registry never asks for them.
    for s in 0..l.secrets {
        let (ns, j) = (namespace(s), s / NAMESPACES);
        let secret = format!("pull-{j}");
        put(support::pull_secret(&ns, &secret, registry, "bench", &format!("bench-{}", hex(s as u64, 12))));
        put(json!({"kind": "ServiceAccount", "metadata": {"name": format!("app-{j}"), "namespace": ns},
            "imagePullSecrets": [{"name": secret}]}));
    }
    for n in 0..l.nodes {
        put(node(n, registry, l.images));
    }
    for i in 0..l.deployments {
        let refs = l.deployment_images(registry, i);
        used.extend(refs.iter().cloned());
        let images = [refs[0].as_str(), refs[1].as_str()];
        let d = limits_deployment(l, i, images, 0);
        // Two old ReplicaSets at 0 and the current one (generation 0).
        for old in [2u32, 1] {
            put(generation_replica_set(i, u32::MAX - old + 1, &d, 0));
        }
        let rs = generation_replica_set(i, 0, &d, l.replicas);
        for p in 0..l.replicas {
            put(replica_pod(i, 0, p, &rs, images, l.nodes));
        }
        put(rs);
        put(d);
    }
    for c in 0..l.cronjobs {
        let k = 2 * l.deployments + 2 * c;
        let refs = [image(registry, k % l.images), image(registry, (k + 1) % l.images)];
        used.extend(refs.iter().cloned());
        for object in cron_job(l, c, [refs[0].as_str(), refs[1].as_str()]) {
            put(object);
        }
    }
    let kubeconfig = api.kubeconfig(&dir);
    api.keep_history(l.history);
    let inventory = Inventory { api, kubeconfig, objects, images: used.len(), churned: Vec::new(), sizes };
    Cluster {
        inventory,
        registry: registry.to_string(),
        generations: Mutex::new(vec![0; l.deployments]),
        harness_rss: status_kib(std::process::id(), "VmRSS:"),
        bytes,
    }
}

impl Cluster {
    fn api(&self) -> &ApiServer {
        &self.inventory.api
    }

    /// The `n`th Pod status update: the Pods of the current ReplicaSets in turn.
    fn pod_update(&self, l: &Limits, n: u64) {
        let pods = (l.deployments * l.replicas) as u64;
        let k = (n % pods) as usize;
        let (i, p) = (k % l.deployments, k / l.deployments);
        let generation = self.generations.lock().expect("generations")[i];
        let Some(mut object) = self.api().object("Pod", &namespace(i), &replica_pod_name(i, generation, p)) else {
            return;
        };
        status_update(&mut object, 2000 + n, n / pods % 2 == 0);
        self.api().apply(object);
    }

    /// The `n`th rollout (a restart): a new ReplicaSet and its Pods, the previous ReplicaSet
    /// scaled to 0 and its Pods deleted, the oldest of three deleted, the Deployment updated.
    fn rollout(&self, l: &Limits, n: u64) {
        // Spread over the Deployments (a stride prime to most counts).
        let i = (n as usize * 7919) % l.deployments;
        let ns = namespace(i);
        let previous = self.generations.lock().expect("generations")[i];
        let generation = previous + 1;
        let refs = l.deployment_images(&self.registry, i);
        let images = [refs[0].as_str(), refs[1].as_str()];
        let d = limits_deployment(l, i, images, generation);
        let rs = generation_replica_set(i, generation, &d, l.replicas);
        for p in 0..l.replicas {
            self.api().apply(replica_pod(i, generation, p, &rs, images, l.nodes));
        }
        self.api().apply(rs);
        if let Some(mut old) = self.api().object("ReplicaSet", &ns, &replica_set_name(i, previous)) {
            old["spec"]["replicas"] = json!(0);
            for field in ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
                old["status"][field] = json!(0);
            }
            self.api().apply(old);
        }
        for p in 0..l.replicas {
            let name = replica_pod_name(i, previous, p);
            if self.api().object("Pod", &ns, &name).is_some() {
                self.api().delete("Pod", &ns, &name);
            }
        }
        // The oldest: generation 0's two predecessors carry u32::MAX and u32::MAX - 1.
        let oldest = generation.wrapping_sub(3);
        if self.api().object("ReplicaSet", &ns, &replica_set_name(i, oldest)).is_some() {
            self.api().delete("ReplicaSet", &ns, &replica_set_name(i, oldest));
        }
        self.api().apply(d);
        self.generations.lock().expect("generations")[i] = generation;
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// Every kind `run` lists, and Nodes: `apps/v1/deployments`, `v1/pods`.
fn listed_resources() -> Vec<String> {
    let mut resources: Vec<String> = pullcheck::sources::cluster::CLUSTER_KINDS
        .iter()
        .map(|kind| {
            let r = pullcheck::sources::cluster::api_resource(*kind);
            format!("{}/{}", r.api_version, r.plural)
        })
        .collect();
    resources.push("v1/nodes".into());
    resources
}

#[derive(serde::Deserialize)]
struct Page {
    metadata: PageMetadata,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct PageMetadata {
    #[serde(rename = "continue")]
    next: Option<String>,
}

/// A bare paged list of every resource, page by page (`limit`), each page scanned for its
/// `continue`: one resource after another as `run`'s watchers list them (`concurrent`: all at
/// once). Its time, objects and bytes.
async fn bare_list(base: &str, limit: usize, concurrent: bool) -> (Duration, usize, usize) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client");
    let started = Instant::now();
    let lists = listed_resources().into_iter().map(|resource| {
        let http = http.clone();
        let prefix = if resource.starts_with("v1/") { "api" } else { "apis" };
        let url = format!("{base}/{prefix}/{resource}");
        async move {
            let (mut objects, mut bytes, mut next) = (0, 0, None::<String>);
            loop {
                let mut request = http.get(&url).query(&[("limit", limit.to_string())]);
                if let Some(token) = &next {
                    request = request.query(&[("continue", token)]);
                }
                let body = request.send().await.expect("list").bytes().await.expect("list body");
                let page: Page = serde_json::from_slice(&body).expect("a list page");
                objects += page.items.len();
                bytes += body.len();
                next = page.metadata.next.filter(|c| !c.is_empty());
                if next.is_none() {
                    return (objects, bytes);
                }
            }
        }
    });
    let done = if concurrent {
        futures_util::future::join_all(lists).await
    } else {
        let mut done = Vec::new();
        for list in lists {
            done.push(list.await);
        }
        done
    };
    (started.elapsed(), done.iter().map(|d| d.0).sum(), done.iter().map(|d| d.1).sum())
}

/// The registry's manifest requests as they come, each with when it was read (every 100 ms).
struct Tail {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tail {
    fn start(log: &Path) -> Tail {
        let (seen, stop) = (Arc::<Mutex<Vec<(Instant, String)>>>::default(), Arc::new(AtomicBool::new(false)));
        let (log, into, stopped) = (log.to_path_buf(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut mark = log_len(&log);
            while !stopped.load(Ordering::Relaxed) {
                // Whole lines only: a line being written is read next time.
                let text = whole_lines(&log, mark);
                mark += text.len() as u64;
                let now = Instant::now();
                into.lock().expect("tail").extend(manifest_targets(&text).into_iter().map(|t| (now, t)));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Tail { seen, stop, thread: Some(thread) }
    }

    fn stop(mut self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.seen.lock().expect("tail"))
    }
}

/// The whole lines of `log` after byte `from`.
fn whole_lines(log: &Path, from: u64) -> String {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.seek(std::io::SeekFrom::Start(from)).and_then(|_| file.read_to_end(&mut bytes));
    }
    bytes.truncate(bytes.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The distinct manifests requested in each tick from the first request on (`ticks` of them):
/// the scheduler starts a batch every tick, so what one tick's bucket holds is its batch.
fn per_tick(seen: &[(Instant, String)], tick: Duration, ticks: usize) -> Vec<usize> {
    let Some(first) = seen.first().map(|(at, _)| *at) else { return vec![0; ticks] };
    let mut buckets: Vec<HashSet<&str>> = vec![HashSet::new(); ticks];
    for (at, target) in seen {
        let n = (at.duration_since(first).as_secs_f64() / tick.as_secs_f64()) as usize;
        if let Some(bucket) = buckets.get_mut(n) {
            bucket.insert(target);
        }
    }
    buckets.iter().map(HashSet::len).collect()
}

/// One `pullcheck check` under `/usr/bin/time`.
#[derive(Default)]
struct CheckRun {
    wall: f64,
    cpu: f64,
    max_rss: u64,
    probes: usize,
    exit: Option<i32>,
}

fn run_check(variant: &Variant, args: &[&str], probes: &Probes, out: &Path) -> CheckRun {
    let home = tempfile::tempdir().expect("empty HOME");
    let timing = out.join(format!("time-{}.txt", variant.label));
    let stderr = std::fs::File::create(out.join(format!("check-{}.log", variant.label))).expect("check log");
    let mut command = Command::new("/usr/bin/time");
    command.args(["-f", "%e %U %S %M", "-o"]).arg(&timing).arg(&variant.bin);
    support::process::cut_off(&mut command, std::env::vars_os().map(|(name, _)| name), home.path());
    command
        .arg("check")
        .args(args)
        .args(["--no-progress", "-o", "json"])
        .env("OTEL_SDK_DISABLED", "true")
        .envs(variant.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mark = log_len(&probes.log);
    let mut child = command.spawn().expect("/usr/bin/time (GNU time) runs pullcheck check");
    let deadline = Instant::now() + Duration::from_secs(1800);
    let exit = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // GNU time's last line is ours; a line before it may say the exit status.
    let text = std::fs::read_to_string(&timing).unwrap_or_default();
    let fields: Vec<f64> =
        text.lines().last().unwrap_or_default().split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let field = |n: usize| fields.get(n).copied().unwrap_or(0.0);
    CheckRun {
        wall: field(0),
        cpu: field(1) + field(2),
        max_rss: field(3) as u64,
        probes: manifests_probed(&probes.log, mark),
        exit,
    }
}

/// Resident memory and CPU seconds every half second, for both by phase.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64, f64)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let (samples, stop) = (Arc::<Mutex<Vec<(Instant, u64, f64)>>>::default(), Arc::new(AtomicBool::new(false)));
        let (into, stopped) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let sample = (Instant::now(), status_kib(pid, "VmRSS:"), cpu_seconds(pid));
                into.lock().expect("samples").push(sample);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Sampler { samples, stop }
    }

    /// The largest RSS sampled in `from..to`.
    fn max(&self, from: Instant, to: Instant) -> u64 {
        let samples = self.samples.lock().expect("samples");
        samples.iter().filter(|(at, _, _)| *at >= from && *at < to).map(|(_, kib, _)| *kib).max().unwrap_or(0)
    }

    /// CPU seconds at the first sample at or after `at`.
    fn cpu_at(&self, at: Instant) -> f64 {
        let samples = self.samples.lock().expect("samples");
        samples.iter().find(|(when, _, _)| *when >= at).or(samples.last()).map_or(0.0, |(_, _, cpu)| *cpu)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Measured {
    bare: (Duration, usize, usize),
    bare_concurrent: Duration,
    sync: Figures,
    rss: u64,
    rss_anon: u64,
    rss_file: u64,
    hwm_sync: u64,
    sync_peak: u64,
    churn_cpu: f64,
    harness_cpu: f64,
    churn_secs: f64,
    pod_rate: f64,
    rollouts: u64,
    churn_peak: u64,
    relist_peaks: Vec<u64>,
    /// Each forced relist: until every kind was listed again, and the CPU seconds it took.
    relists: Vec<(Duration, f64)>,
    rss_end: u64,
    hwm_end: u64,
    batches: Vec<usize>,
    /// Keys probed for the first time in each tick.
    first_batches: Vec<usize>,
    keys_first_window: usize,
    covered: Option<Duration>,
    check_all: CheckRun,
    check_files: CheckRun,
    log_tail: Vec<String>,
}

/// The churn spell: Pod status updates, rollouts, bookmarks and forced relists at their
/// rates; when each relist was forced.
fn churn(cluster: &Cluster, l: &Limits, counters: &mut (u64, u64), m: &mut Measured) -> Vec<Instant> {
    let started = Instant::now();
    let (mut updates, mut rollouts, mut bookmarks) = (0u64, 0u64, 0u64);
    let mut relists = Vec::new();
    while started.elapsed() < Duration::from_secs(l.churn_secs) {
        let elapsed = started.elapsed().as_secs_f64();
        while updates < (elapsed * l.pod_updates as f64) as u64 {
            cluster.pod_update(l, counters.0);
            counters.0 += 1;
            updates += 1;
        }
        while rollouts < (elapsed * l.rollouts_per_min as f64 / 60.0) as u64 {
            cluster.rollout(l, counters.1);
            counters.1 += 1;
            rollouts += 1;
        }
        if l.bookmark_secs > 0 && bookmarks < (elapsed / l.bookmark_secs as f64) as u64 {
            cluster.api().bookmark();
            bookmarks += 1;
        }
        if l.relist_secs > 0 && (relists.len() as u64) < (elapsed / l.relist_secs as f64) as u64 {
            cluster.api().compact();
            relists.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    m.churn_secs = started.elapsed().as_secs_f64();
    m.pod_rate = updates as f64 / m.churn_secs;
    m.rollouts = rollouts;
    relists
}

fn measure(
    variant: &Variant,
    cluster: &Cluster,
    l: &Limits,
    probes: &Probes,
    out: &Path,
    counters: &mut (u64, u64),
) -> Measured {
    let mut m = Measured::default();
    let registry_log = Tail::start(&probes.log);
    let window = format!("{}s", l.window_secs);
    let tick = format!("{}s", l.tick_secs);
    let running =
        start_and_wait(variant, &cluster.inventory, probes, None, &mut m.sync, [&window, &tick], l.sync_deadline);
    let sampler = Sampler::start(running.pid);
    std::thread::sleep(Duration::from_secs(3));
    m.rss = status_kib(running.pid, "VmRSS:");
    m.rss_anon = status_kib(running.pid, "RssAnon:");
    m.rss_file = status_kib(running.pid, "RssFile:");
    m.hwm_sync = status_kib(running.pid, "VmHWM:");
    m.sync_peak = m.hwm_sync;
    let (cpu, harness_cpu) = (cpu_seconds(running.pid), cpu_seconds(std::process::id()));
    let churn_start = Instant::now();
    let relists = churn(cluster, l, counters, &mut m);
    m.churn_cpu = (cpu_seconds(running.pid) - cpu) / m.churn_secs;
    m.harness_cpu = (cpu_seconds(std::process::id()) - harness_cpu) / m.churn_secs;
    // The rest of the first window, if churn was shorter.
    let window_end = running.started + Duration::from_secs(l.window_secs);
    while Instant::now() < window_end + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(500));
    }
    m.rss_end = status_kib(running.pid, "VmRSS:");
    m.hwm_end = status_kib(running.pid, "VmHWM:");
    let mut edges = vec![churn_start];
    edges.extend(relists.iter().copied());
    edges.push(Instant::now());
    // Before the first relist; then from each relist to the next.
    m.churn_peak = sampler.max(edges[0], edges[1]);
    m.relist_peaks = edges.windows(2).skip(1).map(|w| sampler.max(w[0], w[1])).collect();
    let resources: Vec<String> = listed_resources().into_iter().filter(|r| r != "v1/nodes").collect();
    for at in &relists {
        let done = cluster.api().lists_completed_since(*at);
        if let Some(end) =
            resources.iter().map(|r| done.get(r).copied()).collect::<Option<Vec<_>>>().and_then(|d| d.into_iter().max())
        {
            m.relists.push((end.duration_since(*at), sampler.cpu_at(end) - sampler.cpu_at(*at)));
        }
    }
    m.log_tail = tail(&running);
    drop(running);
    let seen = registry_log.stop();
    let first_probe = seen.first().map(|(at, _)| *at);
    let in_window: Vec<(Instant, String)> = match first_probe {
        Some(first) => seen
            .iter()
            .filter(|(at, _)| at.duration_since(first) < Duration::from_secs(l.window_secs))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let ticks = l.window_secs.div_ceil(l.tick_secs.max(1)) as usize;
    m.batches = per_tick(&in_window, Duration::from_secs(l.tick_secs.max(1)), ticks);
    // Each key's first probe only: the window's spread of the keys, apart from the retries that
    // confirm an absent image or follow a transient failure.
    let mut once = HashSet::new();
    let firsts: Vec<(Instant, String)> = in_window.iter().filter(|(_, t)| once.insert(t.as_str())).cloned().collect();
    m.first_batches = per_tick(&firsts, Duration::from_secs(l.tick_secs.max(1)), ticks);
    let mut distinct = HashSet::new();
    for (at, target) in &in_window {
        if distinct.insert(target.as_str()) && distinct.len() == cluster.inventory.images {
            m.covered = first_probe.map(|f| at.duration_since(f));
        }
    }
    m.keys_first_window = distinct.len();
    // `check -A` against the same cluster, then `check -f` over a file of images.
    let kubeconfig = cluster.inventory.kubeconfig.display().to_string();
    m.check_all = run_check(variant, &["-A", "--kubeconfig", &kubeconfig], probes, out);
    let file = check_file(out, &cluster.registry, l.check_images);
    m.check_files = run_check(variant, &["-f", &file.display().to_string()], probes, out);
    m
}

/// A manifest file naming `images` images, one Deployment each.
fn check_file(out: &Path, registry: &str, images: usize) -> PathBuf {
    let path = out.join("limits").join("check-images.yaml");
    let mut text = String::new();
    for k in 0..images {
        let object = support::workload("Deployment", &namespace(k), &format!("check-{k}"), &image(registry, k));
        text.push_str("---\n");
        text.push_str(&object.to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).expect("check file");
    path
}

pub fn main() {
    let l = Limits::from_env();
    let variants = variants();
    let out = output_dir();
    require_binaries(&variants);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let env = Env::start().await;
        let registry_host = env.anon.addr.clone();
        let setup = Instant::now();
        push_images(&env, l.pushed.min(l.images)).await;
        let api = ApiServer::start().await;
        let cluster = tokio::task::block_in_place(|| build(api, &out, &l, &registry_host));
        let probes = Probes { log: env.anon.access_log().to_path_buf() };
        let count = |kind: &str| cluster.inventory.sizes.get(kind).map_or(0, |s| s.count);
        println!(
            "limits: {} objects ({} Deployments, {} ReplicaSets, {} Pods, {} Nodes, {} CronJobs, {} Jobs, {} Secrets), {} images ({} pushed); set up in {:.1} s",
            cluster.inventory.objects,
            count("Deployment"),
            count("ReplicaSet"),
            count("Pod"),
            count("Node"),
            count("CronJob"),
            count("Job"),
            l.secrets,
            cluster.inventory.images,
            l.pushed.min(l.images),
            setup.elapsed().as_secs_f64()
        );
        println!("  average object sizes: {}", sizes_line(&cluster.inventory.sizes));
        println!(
            "  harness: {:.0} MiB of JSON stored; this process (harness, registry clients, generator) {} resident",
            cluster.bytes as f64 / 1048576.0,
            mib(cluster.harness_rss)
        );
        println!(
            "  run --window {}s --tick {}s, OTEL_SDK_DISABLED=true; churn {} s: {} Pod status updates/s, {} rollouts/min, a bookmark every {} s, a forced relist (410) every {} s",
            l.window_secs, l.tick_secs, l.churn_secs, l.pod_updates, l.rollouts_per_min, l.bookmark_secs, l.relist_secs
        );
        let mut counters = (0u64, 0u64);
        let mut results = Vec::new();
        for v in &variants {
            eprintln!("limits: measuring {} ({})", v.label, v.bin.display());
            let bare = bare_list(&cluster.api().url(), l.list_page, false).await;
            let (concurrent, _, _) = bare_list(&cluster.api().url(), l.list_page, true).await;
            eprintln!("limits: bare list {:.1} s ({:.1} s concurrent), {} objects", bare.0.as_secs_f64(), concurrent.as_secs_f64(), bare.1);
            let mut m = tokio::task::block_in_place(|| measure(v, &cluster, &l, &probes, &out, &mut counters));
            (m.bare, m.bare_concurrent) = (bare, concurrent);
            results.push(m);
        }
        print_table(&variants, &results, &l);
    });
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}×", a / b) } else { "-".into() }
}

fn print_table(variants: &[Variant], results: &[Measured], l: &Limits) {
    let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, goal: &str, cell: &dyn Fn(&Measured) -> String| {
        rows.push((name.to_string(), goal.to_string(), results.iter().map(cell).collect()));
    };
    row("bare paged list, kinds in turn (limit=500)", "", &|m| {
        format!("{:.2} s, {} obj., {:.0} MiB", m.bare.0.as_secs_f64(), m.bare.1, m.bare.2 as f64 / 1048576.0)
    });
    row("  the kinds at once", "", &|m| format!("{:.2} s", m.bare_concurrent.as_secs_f64()));
    row("initial lists served", "", &|m| secs(m.sync.lists));
    row("/readyz 200", "", &|m| secs(m.sync.ready));
    row("  ready / bare list", "≤ 1.1×", &|m| {
        ratio(m.sync.ready.map_or(0.0, |r| r.as_secs_f64()), m.bare.0.as_secs_f64())
    });
    row("CPU to /readyz", "", &|m| format!("{:.2} s", m.sync.sync_cpu));
    row("RSS after sync (ready + 3 s)", "< 64 MiB", &|m| mib(m.rss));
    row("  anonymous / file-backed", "", &|m| format!("{} / {}", mib(m.rss_anon), mib(m.rss_file)));
    row("peak through sync (VmHWM)", "", &|m| {
        format!("{} ({})", mib(m.sync_peak), ratio(m.sync_peak as f64, m.rss as f64))
    });
    row("peak RSS sampled in churn, before a relist", "", &|m| mib(m.churn_peak));
    row("peak RSS sampled after each forced relist", "", &|m| {
        m.relist_peaks.iter().map(|k| mib(*k)).collect::<Vec<_>>().join(", ")
    });
    row("RSS at the end", "", &|m| mib(m.rss_end));
    row("peak (VmHWM) at the end / RSS after sync", "≤ 1.3×", &|m| {
        format!("{} ({})", mib(m.hwm_end), ratio(m.hwm_end as f64, m.rss as f64))
    });
    row("churn: Pod updates/s, rollouts", "", &|m| {
        format!("{:.0}/s, {} in {:.0} s", m.pod_rate, m.rollouts, m.churn_secs)
    });
    row("CPU in churn (of a core)", "< 5 %", &|m| format!("{:.2} %", m.churn_cpu * 100.0));
    row("  forced relists: lists done in, CPU", "", &|m| {
        m.relists.iter().map(|(d, cpu)| format!("{:.1} s, {cpu:.1} s", d.as_secs_f64())).collect::<Vec<_>>().join("; ")
    });
    row("  CPU in churn without the relists", "", &|m| {
        let (secs, cpu) = m.relists.iter().fold((0.0, 0.0), |(s, c), (d, cpu)| (s + d.as_secs_f64(), c + cpu));
        format!("{:.2} %", (m.churn_cpu * m.churn_secs - cpu) / (m.churn_secs - secs).max(1.0) * 100.0)
    });
    row("  the bench's own (harness, churn) meanwhile", "", &|m| format!("{:.2} %", m.harness_cpu * 100.0));
    row("first window: keys probed / covered at", "every key", &|m| {
        format!("{} / {}", m.keys_first_window, secs(m.covered))
    });
    let spread = |batches: &[usize]| {
        let mean = batches.iter().sum::<usize>() as f64 / batches.len().max(1) as f64;
        (mean, batches.iter().copied().max().unwrap_or(0))
    };
    let shown = |batches: &[usize]| {
        let shown: Vec<String> = batches.iter().take(12).map(usize::to_string).collect();
        format!("{}{}", shown.join(" "), if batches.len() > 12 { " …" } else { "" })
    };
    row("first window: ticks, mean, max keys first probed", "", &|m| {
        let (mean, max) = spread(&m.first_batches);
        format!("{}, {:.0}, {}", m.first_batches.len(), mean, max)
    });
    row("  max batch / mean", "≤ 1.5×", &|m| {
        let (mean, max) = spread(&m.first_batches);
        ratio(max as f64, mean)
    });
    row("  keys first probed per tick", "", &|m| shown(&m.first_batches));
    row("  with the retries: mean, max, max / mean", "", &|m| {
        let (mean, max) = spread(&m.batches);
        format!("{mean:.0}, {max}, {}", ratio(max as f64, mean))
    });
    row("  distinct manifests per tick", "", &|m| shown(&m.batches));
    row("check -f: probes, CPU per probe", "≤ 60 µs", &|m| {
        let f = &m.check_files;
        format!("{}, {:.0} µs", f.probes, f.cpu / f.probes.max(1) as f64 * 1e6)
    });
    row("check -A: wall (exit), probes", "", &|m| {
        let a = &m.check_all;
        format!("{:.2} s ({}), {}", a.wall, a.exit.map_or("killed".into(), |c| c.to_string()), a.probes)
    });
    row("  check -A / bare list", "≤ 1.2×", &|m| ratio(m.check_all.wall, m.bare.0.as_secs_f64()));
    row("  check -A peak RSS", "< 128 MiB", &|m| mib(m.check_all.max_rss));
    let width = rows.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    let goal_width = rows.iter().map(|(_, g, _)| g.chars().count()).max().unwrap_or(0);
    let cols: Vec<usize> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| rows.iter().map(|(_, _, c)| c[i].chars().count()).chain([v.label.len()]).max().unwrap_or(0))
        .collect();
    println!();
    print!("{:width$}  {:goal_width$}", "", "goal");
    for (v, w) in variants.iter().zip(&cols) {
        print!("  {:>w$}", v.label);
    }
    println!();
    for (name, goal, cells) in &rows {
        print!("{name:width$}  {goal:goal_width$}");
        for (c, w) in cells.iter().zip(&cols) {
            print!("  {c:>w$}");
        }
        println!();
    }
    println!(
        "({} Deployments × {} replicas, {} images, {} nodes, {} CronJobs, {} Secrets; window {} s, tick {} s)",
        l.deployments, l.replicas, l.images, l.nodes, l.cronjobs, l.secrets, l.window_secs, l.tick_secs
    );
    for (v, m) in variants.iter().zip(results) {
        if m.sync.ready.is_none() {
            println!("{} did not get ready; its last log lines: {:#?}", v.label, m.log_tail);
        }
    }
}
