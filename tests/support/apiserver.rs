//! A Kubernetes API-server stand-in that speaks the real list+watch protocol over HTTP, for the
//! real `kube` client: paged lists with `continue`, watch streams from a resourceVersion with
//! ADDED/MODIFIED/DELETED/BOOKMARK, 410 Gone for expired versions, dropped connections, and
//! 403 for resources the test forbids. No API-server package exists for this machine.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::http::{Reply, Request, Server};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// `apps/v1/deployments`, `v1/pods`.
    resource: String,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

struct Change {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

struct Watch {
    resource: String,
    namespace: Option<String>,
    tx: mpsc::Sender<Vec<u8>>,
}

#[derive(Default)]
struct Cluster {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches asking for an older version get 410 Gone.
    compacted_below: u64,
    forbidden: HashSet<String>,
    watches: Vec<Watch>,
    page_size: Option<usize>,
    requests: Vec<String>,
}

pub struct ApiServer {
    pub server: Server,
    cluster: Arc<Mutex<Cluster>>,
}

/// apiVersion and plural of a kind.
pub fn resource_of(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "Deployment" => ("apps/v1", "deployments"),
        "StatefulSet" => ("apps/v1", "statefulsets"),
        "DaemonSet" => ("apps/v1", "daemonsets"),
        "ReplicaSet" => ("apps/v1", "replicasets"),
        "Job" => ("batch/v1", "jobs"),
        "CronJob" => ("batch/v1", "cronjobs"),
        "ReplicationController" => ("v1", "replicationcontrollers"),
        "Pod" => ("v1", "pods"),
        "PodTemplate" => ("v1", "podtemplates"),
        "Secret" => ("v1", "secrets"),
        "ServiceAccount" => ("v1", "serviceaccounts"),
        "Namespace" => ("v1", "namespaces"),
        "Node" => ("v1", "nodes"),
        other => panic!("the API-server harness has no resource for kind {other}"),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn line(kind: &str, object: &Value) -> Vec<u8> {
    let mut bytes = json!({"type": kind, "object": object}).to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let cluster: Arc<Mutex<Cluster>> = Arc::default();
        let shared = cluster.clone();
        let server = Server::start("127.0.0.1:0", move |req: Request| {
            let reply = handle(&shared, &req);
            async move { reply }
        })
        .await;
        ApiServer { server, cluster }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A kubeconfig pointing at this server, for the CLI.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster: {{server: '{}'}}\nusers:\n- name: tester\n  user: {{token: harness-token}}\ncontexts:\n- name: harness\n  context: {{cluster: harness, user: tester, namespace: default}}\ncurrent-context: harness\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    pub fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = self.url().parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().expect("harness lock")
    }

    /// Creates or replaces an object (with `kind`, `metadata.name`, optional `metadata.namespace`).
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let (api_version, plural) = resource_of(&kind);
        object["apiVersion"] = json!(api_version);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let key = Key { resource: format!("{api_version}/{plural}"), namespace, name };
        let mut cluster = self.lock();
        cluster.rv += 1;
        let rv = cluster.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.name, rv));
        }
        let kind = if cluster.objects.insert(key.clone(), object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        cluster.record(rv, key, kind, object);
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let (api_version, plural) = resource_of(kind);
        let key = Key { resource: format!("{api_version}/{plural}"), namespace: namespace.into(), name: name.into() };
        let mut cluster = self.lock();
        let Some(mut object) = cluster.objects.remove(&key) else {
            panic!("delete of missing {kind} {namespace}/{name}")
        };
        cluster.rv += 1;
        let rv = cluster.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        cluster.record(rv, key, "DELETED", object);
    }

    /// Every list and watch of `kind` answers 403 from now on.
    pub fn forbid(&self, kind: &str) {
        let (api_version, plural) = resource_of(kind);
        self.lock().forbidden.insert(format!("{api_version}/{plural}"));
    }

    /// Lists return at most `n` items per page whatever the client asks.
    pub fn page_size(&self, n: usize) {
        self.lock().page_size = Some(n);
    }

    /// Expires every version so far: open watches get a 410 Gone event and are closed, and
    /// watches from an older version are refused with 410, as after etcd compaction.
    pub fn compact(&self) {
        let mut cluster = self.lock();
        cluster.compacted_below = cluster.rv + 1;
        let gone = line("ERROR", &status(410, "Expired", "too old resource version"));
        for watch in cluster.watches.drain(..) {
            let _ = watch.tx.try_send(gone.clone());
        }
    }

    /// Drops every open watch connection, as an API-server restart does.
    pub fn disconnect_watches(&self) {
        self.lock().watches.clear();
    }

    pub fn bookmark(&self) {
        let mut cluster = self.lock();
        let rv = cluster.rv.to_string();
        cluster.watches.retain(|w| {
            let bookmark = json!({"kind": "Bookmark", "apiVersion": "v1", "metadata": {"resourceVersion": rv}});
            w.tx.try_send(line("BOOKMARK", &bookmark)).is_ok()
        });
    }

    pub fn open_watches(&self) -> usize {
        let mut cluster = self.lock();
        cluster.watches.retain(|w| !w.tx.is_closed());
        cluster.watches.len()
    }

    /// Requests seen, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

impl Cluster {
    fn record(&mut self, rv: u64, key: Key, kind: &'static str, object: Value) {
        let event = line(kind, &object);
        self.watches.retain(|w| {
            let matches = w.resource == key.resource && w.namespace.as_ref().is_none_or(|ns| *ns == key.namespace);
            !matches || w.tx.try_send(event.clone()).is_ok()
        });
        self.history.push(Change { rv, key, kind, object });
    }
}

fn handle(cluster: &Mutex<Cluster>, req: &Request) -> Reply {
    let mut cluster = cluster.lock().expect("harness lock");
    cluster.requests.push(format!("{} {}", req.method, req.target));
    let path = req.target.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group_version, rest) = match segments.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return Reply::json(404, &status(404, "NotFound", "no such path")),
    };
    let (plural, namespace, name) = match rest {
        [plural] => (*plural, None, None),
        ["namespaces", name] => ("namespaces", None, Some(*name)),
        ["namespaces", ns, plural] => (*plural, Some(*ns), None),
        ["namespaces", ns, plural, name] => (*plural, Some(*ns), Some(*name)),
        _ => return Reply::json(404, &status(404, "NotFound", "no such path")),
    };
    let resource = format!("{group_version}/{plural}");
    if cluster.forbidden.contains(&resource) {
        let message = format!(
            "{plural} is forbidden: User \"system:serviceaccount:pullcheck:pullcheck\" cannot list resource \"{plural}\""
        );
        return Reply::json(403, &status(403, "Forbidden", &message));
    }
    if let Some(name) = name {
        let key = Key { resource, namespace: namespace.unwrap_or_default().into(), name: name.into() };
        return match cluster.objects.get(&key) {
            Some(object) => Reply::json(200, object),
            None => Reply::json(404, &status(404, "NotFound", &format!("{plural} \"{name}\" not found"))),
        };
    }
    let watch = req.query("watch").is_some_and(|w| w == "true" || w == "1");
    if watch {
        let from: u64 = req.query("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let (tx, rx) = mpsc::channel(1024);
        if from < cluster.compacted_below {
            let _ = tx.try_send(line("ERROR", &status(410, "Expired", "too old resource version")));
        } else {
            for change in cluster.history.iter().filter(|c| c.rv > from) {
                if change.key.resource == resource && namespace.is_none_or(|ns| ns == change.key.namespace) {
                    let _ = tx.try_send(line(change.kind, &change.object));
                }
            }
            cluster.watches.push(Watch { resource, namespace: namespace.map(str::to_string), tx });
        }
        return Reply::Stream {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            chunks: rx,
        };
    }
    let items: Vec<&Value> = cluster
        .objects
        .iter()
        .filter(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| ns == k.namespace))
        .map(|(_, v)| v)
        .collect();
    let offset: usize = req.query("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit = req.query("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let limit = cluster.page_size.map_or(limit, |p| p.min(limit));
    let page: Vec<&Value> = items.iter().skip(offset).take(limit).copied().collect();
    let next = offset + page.len();
    let mut metadata = json!({"resourceVersion": cluster.rv.to_string()});
    if next < items.len() {
        metadata["continue"] = json!(next.to_string());
    }
    Reply::json(200, &json!({"kind": "List", "apiVersion": group_version, "metadata": metadata, "items": page}))
}
