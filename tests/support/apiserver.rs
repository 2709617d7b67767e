//! A Kubernetes API-server stand-in that speaks the real protocol over HTTP, for the real `kube`
//! client, where pullcheck relies on it: paged lists served from one snapshot through `continue`
//! tokens (410 Expired once compacted), watch streams from a resourceVersion with
//! ADDED/MODIFIED/DELETED/BOOKMARK, 410 Gone for expired versions, dropped connections, get,
//! create/update/delete with the API server's conflicts, and RBAC denials per verb and namespace
//! with its 403 messages. No API-server package exists for this machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::http::{Reply, Request, Server};

/// The identity the harness answers 403s for, as a pod's service account would be named.
pub const USER: &str = "system:serviceaccount:pullcheck:pullcheck";

/// The bearer token the harness knows (its kubeconfig's); a request with another one is
/// answered 401, as the API server answers a token no authenticator accepts. A request
/// without one is let through, for the tests' own clients.
pub const TOKEN: &str = "harness-token";

/// The RBAC verbs the harness tells apart.
pub const VERBS: [&str; 6] = ["get", "list", "watch", "create", "update", "delete"];

/// Kind, apiVersion and plural of every resource the harness stores.
const RESOURCES: &[(&str, &str, &str)] = &[
    ("Deployment", "apps/v1", "deployments"),
    ("StatefulSet", "apps/v1", "statefulsets"),
    ("DaemonSet", "apps/v1", "daemonsets"),
    ("ReplicaSet", "apps/v1", "replicasets"),
    ("Job", "batch/v1", "jobs"),
    ("CronJob", "batch/v1", "cronjobs"),
    ("ReplicationController", "v1", "replicationcontrollers"),
    ("Pod", "v1", "pods"),
    ("PodTemplate", "v1", "podtemplates"),
    ("Secret", "v1", "secrets"),
    ("ServiceAccount", "v1", "serviceaccounts"),
    // The `token` subresource of service accounts: only `create` (TokenRequest).
    ("TokenRequest", "v1", "serviceaccounts/token"),
    ("Namespace", "v1", "namespaces"),
    ("Node", "v1", "nodes"),
    ("Lease", "coordination.k8s.io/v1", "leases"),
    ("Event", "v1", "events"),
    ("Event", "events.k8s.io/v1", "events"),
];

/// apiVersion and plural of a kind (for `Event`, the core `v1` one).
pub fn resource_of(kind: &str) -> (&'static str, &'static str) {
    RESOURCES
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, api_version, plural)| (*api_version, *plural))
        .unwrap_or_else(|| panic!("the API-server harness has no resource for kind {kind}"))
}

fn kind_of(group_version: &str, plural: &str) -> Option<&'static str> {
    RESOURCES.iter().find(|(_, gv, p)| *gv == group_version && *p == plural).map(|(kind, _, _)| *kind)
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// `apps/v1/deployments`, `v1/pods`.
    resource: String,
    /// Empty for cluster-scoped objects.
    namespace: String,
    name: String,
}

impl Key {
    /// Where the object sits in a list: the real server lists in etcd key order, `ns/name`.
    fn position(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}/{}", self.namespace, self.name) }
    }

    fn within(&self, resource: &str, namespace: Option<&str>) -> bool {
        self.resource == resource && namespace.is_none_or(|ns| ns == self.namespace)
    }
}

/// An object as stored: its JSON, written once, and the three metadata fields the server itself
/// reads back (uid, creationTimestamp, resourceVersion). The store and the history share it
/// (never copied per change), and lists, watch events and gets send the bytes as they are, so
/// tens of thousands of realistic objects are served at the speed of a copy. No parsed `Value`
/// is kept: at Kubernetes' published limits (360,000 objects with managedFields, the limits
/// scenario of benches/footprint.rs) the JSON alone is ~2.5 GB and a `Value` tree is several
/// times its text; what needs the object parses it again ([`Stored::value`]).
#[derive(Clone)]
struct Stored(Arc<StoredObject>);

static NULL: Value = Value::Null;

struct StoredObject {
    json: Box<str>,
    uid: Value,
    creation_timestamp: Value,
    resource_version: Value,
}

impl Stored {
    fn new(value: &Value) -> Stored {
        let metadata = &value["metadata"];
        Stored(Arc::new(StoredObject {
            json: value.to_string().into_boxed_str(),
            uid: metadata["uid"].clone(),
            creation_timestamp: metadata["creationTimestamp"].clone(),
            resource_version: metadata["resourceVersion"].clone(),
        }))
    }

    fn json(&self) -> &str {
        &self.0.json
    }

    /// The object, parsed from its stored JSON.
    fn value(&self) -> Value {
        serde_json::from_str(&self.0.json).expect("the harness stored valid JSON")
    }

    /// `metadata.uid` or `metadata.resourceVersion` (`Null` for any other field).
    fn metadata(&self, field: &str) -> &Value {
        match field {
            "uid" => &self.0.uid,
            "resourceVersion" => &self.0.resource_version,
            "creationTimestamp" => &self.0.creation_timestamp,
            _ => &NULL,
        }
    }

    /// A reply carrying the stored JSON as it is.
    fn reply(&self, status: u16) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: self.json().as_bytes().to_vec(),
        }
    }
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json())
    }
}

struct Change {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Stored,
    /// The object before this change (`None`: it did not exist), to rewind the store to an
    /// older version for a continued list.
    previous: Option<Stored>,
}

struct Watch {
    resource: String,
    namespace: Option<String>,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A denial: `verb` (`None`: every verb) on `resource`, in `namespace` (`None`: everywhere).
struct Denial {
    verb: Option<&'static str>,
    resource: String,
    namespace: Option<String>,
}

impl Denial {
    /// Denied in one namespace means no cluster-wide grant either: a ClusterRoleBinding that
    /// allowed the cluster-scope request would allow it in that namespace too.
    fn applies(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        self.verb.is_none_or(|v| v == verb)
            && self.resource == resource
            && (self.namespace.is_none() || namespace.is_none() || self.namespace.as_deref() == namespace)
    }
}

#[derive(Default)]
struct Cluster {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    /// Every change since the start (or the last `history_limit`), oldest first: watches replay
    /// it and continued lists rewind the store through it.
    history: Vec<Change>,
    /// Keep only this many changes: older ones are compacted away as etcd does, without
    /// closing open watches (they are current).
    history_limit: Option<usize>,
    /// Watches and list continuations from an older version get 410, as after etcd compaction.
    compacted_below: u64,
    /// When each list that ended (a page without `continue`) was served, by resource.
    lists_done: Vec<(String, Instant)>,
    denials: Vec<Denial>,
    watches: Vec<Watch>,
    page_size: Option<usize>,
    /// The snapshots of lists under way, by resource, namespace and version: a continued page
    /// costs its own items, not the whole resource again, as etcd's range reads do.
    listing: Vec<Listing>,
    requests: Vec<String>,
    /// When each request in `requests` came.
    request_times: Vec<Instant>,
    uids: u64,
    /// Every service account token issued by TokenRequest, in order.
    issued_tokens: Vec<String>,
    /// Until then, every watch is answered 410 Gone (a 410 storm).
    gone_until: Option<Instant>,
    /// So many lists and watches to come are answered 429 with this Retry-After, in seconds,
    /// as API Priority and Fairness rejects a request its queues have no room for.
    throttle: (usize, u64),
    /// The requests answered 429, with when.
    throttled: Vec<(Instant, String)>,
    /// Lists of these resources (`apps/v1/deployments`) are answered this late.
    slow_lists: Vec<(String, Duration)>,
}

/// Lists whose pages are still being read; the oldest is dropped past this many (a client that
/// never reads its last page).
const LISTINGS_KEPT: usize = 16;

struct Listing {
    resource: String,
    namespace: Option<String>,
    rv: u64,
    /// The objects as they were at `rv`, in list order.
    items: Arc<Vec<(String, Stored)>>,
}

impl Listing {
    fn is(&self, resource: &str, namespace: Option<&str>, rv: u64) -> bool {
        self.resource == resource && self.namespace.as_deref() == namespace && self.rv == rv
    }
}

fn write_kubeconfig(path: &std::path::Path, server: &str, token: &str) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster: {{server: '{server}'}}\nusers:\n- name: tester\n  user: {{token: {token}}}\ncontexts:\n- name: harness\n  context: {{cluster: harness, user: tester, namespace: default}}\ncurrent-context: harness\n"
    );
    std::fs::write(path, text).expect("write kubeconfig");
    path.to_path_buf()
}

pub struct ApiServer {
    pub server: Server,
    cluster: Arc<Mutex<Cluster>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn failure(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(code, &status(code, reason, message))
}

/// A watch event line; `object` is JSON as it displays (a `Value`, a stored object).
fn line(kind: &str, object: &dyn std::fmt::Display) -> Vec<u8> {
    format!("{{\"type\":{},\"object\":{object}}}\n", Value::from(kind)).into_bytes()
}

/// `leases.coordination.k8s.io`, or `pods` for the core group, as the API server names a
/// resource in its messages.
fn qualified(group_version: &str, plural: &str) -> String {
    match group_version.rsplit_once('/') {
        Some((group, _)) => format!("{plural}.{group}"),
        None => plural.to_string(),
    }
}

fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).expect("a time in range").to_string()
}

/// A list position in a snapshot, as the real `continue` token carries it (base64 of
/// `{"v":"meta.k8s.io/v1","rv":…,"start":"ns/name\u0000"}`).
fn encode_continue(rv: u64, last: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last}\u{0}")});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The snapshot version and the position to list after, or why the token is not one.
fn decode_continue(token: &str) -> Result<(u64, String), String> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|e| e.to_string())?;
    let token: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if token["v"] != "meta.k8s.io/v1" {
        return Err(format!("unsupported version {}", token["v"]));
    }
    let rv = token["rv"].as_u64().filter(|rv| *rv > 0).ok_or("no resource version")?;
    let start = token["start"].as_str().and_then(|s| s.strip_suffix('\u{0}')).ok_or("no start key")?;
    Ok((rv, start.to_string()))
}

impl ApiServer {
    /// A fresh cluster holding what every real one holds from its start: the `kube-system`
    /// namespace, with its uid (the cluster's identity, `k8s.cluster.uid`).
    pub async fn start() -> ApiServer {
        let cluster: Arc<Mutex<Cluster>> = Arc::default();
        let kube_system = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}});
        let key = Key { resource: "v1/namespaces".into(), namespace: String::new(), name: "kube-system".into() };
        cluster.lock().expect("harness lock").store(key, kube_system);
        let shared = cluster.clone();
        let server = Server::start("127.0.0.1:0", move |req: Request| {
            let (reply, delay) = handle(&shared, &req);
            async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                reply
            }
        })
        .await;
        ApiServer { server, cluster }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A kubeconfig pointing at this server, for the CLI.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        self.kubeconfig_with_token(dir, TOKEN)
    }

    /// The same with another bearer token: one the harness does not know gets 401s.
    pub fn kubeconfig_with_token(&self, dir: &std::path::Path, token: &str) -> std::path::PathBuf {
        let name = if token == TOKEN { "kubeconfig".to_string() } else { format!("kubeconfig-{token}") };
        write_kubeconfig(&dir.join(name), &self.url(), token)
    }

    /// A kubeconfig reaching the harness through `server` (a proxy in front of it), in a file
    /// of its own named after `name`.
    pub fn kubeconfig_via(&self, dir: &std::path::Path, server: &str, name: &str) -> std::path::PathBuf {
        write_kubeconfig(&dir.join(format!("kubeconfig-{name}")), server, TOKEN)
    }

    pub fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = self.url().parse().expect("url");
        kube::Client::try_from(kube::Config::new(url)).expect("kube client")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().expect("harness lock")
    }

    /// Creates or replaces an object (with `kind`, `metadata.name`, optional `metadata.namespace`
    /// and `apiVersion`), whatever its resourceVersion says.
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let (api_version, plural) = match object["apiVersion"].as_str() {
            Some(api_version) => RESOURCES
                .iter()
                .find(|(k, gv, _)| *k == kind && *gv == api_version)
                .map(|(_, gv, plural)| (*gv, *plural))
                .unwrap_or_else(|| panic!("the API-server harness has no resource for {api_version} {kind}")),
            None => resource_of(&kind),
        };
        object["apiVersion"] = json!(api_version);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let key = Key { resource: format!("{api_version}/{plural}"), namespace, name };
        self.lock().store(key, object);
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let (api_version, plural) = resource_of(kind);
        let key = Key { resource: format!("{api_version}/{plural}"), namespace: namespace.into(), name: name.into() };
        if self.lock().remove(&key).is_none() {
            panic!("delete of missing {kind} {namespace}/{name}")
        }
    }

    /// The stored object, as a get would answer it.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (api_version, plural) = resource_of(kind);
        let key = Key { resource: format!("{api_version}/{plural}"), namespace: namespace.into(), name: name.into() };
        self.lock().objects.get(&key).map(Stored::value)
    }

    /// The `kube-system` namespace's uid, as a get of it answers.
    pub fn kube_system_uid(&self) -> String {
        let namespace = self.object("Namespace", "", "kube-system").expect("kube-system is there from the start");
        namespace["metadata"]["uid"].as_str().expect("every namespace has a uid").to_string()
    }

    /// Every verb on `kind`, everywhere, answers 403 from now on.
    pub fn forbid(&self, kind: &str) {
        let (api_version, plural) = resource_of(kind);
        self.lock().denials.push(Denial { verb: None, resource: format!("{api_version}/{plural}"), namespace: None });
    }

    /// Every denial on `kind` lifted: RBAC granted again.
    pub fn allow(&self, kind: &str) {
        let (api_version, plural) = resource_of(kind);
        let resource = format!("{api_version}/{plural}");
        self.lock().denials.retain(|d| d.resource != resource);
    }

    /// `verb` (get, list, watch, create, update, delete) on `kind` answers 403 from now on, in
    /// `namespace` and at the cluster scope, or everywhere when `None`.
    pub fn forbid_verb(&self, verb: &str, kind: &str, namespace: Option<&str>) {
        let verb = VERBS.into_iter().find(|v| *v == verb).unwrap_or_else(|| panic!("no RBAC verb {verb}"));
        let (api_version, plural) = resource_of(kind);
        let resource = format!("{api_version}/{plural}");
        self.lock().denials.push(Denial { verb: Some(verb), resource, namespace: namespace.map(str::to_string) });
    }

    /// Every service account token TokenRequest issued so far: credentials a test checks never
    /// show.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().issued_tokens.clone()
    }

    /// Lists return at most `n` items per page whatever the client asks.
    pub fn page_size(&self, n: usize) {
        self.lock().page_size = Some(n);
    }

    /// Expires every version so far, as etcd compaction does: open watches get a 410 Gone event
    /// and are closed, watches from an older version are refused with 410, and so are list
    /// continuations of a snapshot taken before.
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

    /// Keeps only the last `changes` changes from now on, compacting older versions away as
    /// etcd does (watches and list continuations from before them get 410), without closing
    /// the watches that are current: for long runs with many updates.
    pub fn keep_history(&self, changes: usize) {
        let mut cluster = self.lock();
        cluster.history_limit = Some(changes.max(1));
        cluster.trim_history();
    }

    /// The resources (`apps/v1/deployments`) whose lists ended (their last page served) at or
    /// after `since`, each with when it first did.
    pub fn lists_completed_since(&self, since: Instant) -> BTreeMap<String, Instant> {
        let mut done = BTreeMap::new();
        for (resource, at) in self.lock().lists_done.iter().filter(|(_, at)| *at >= since) {
            done.entry(resource.clone()).or_insert(*at);
        }
        done
    }

    /// Requests seen, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Requests seen, each with when it came.
    pub fn timed_requests(&self) -> Vec<(Instant, String)> {
        let cluster = self.lock();
        cluster.request_times.iter().copied().zip(cluster.requests.iter().cloned()).collect()
    }

    /// A 410 storm for `stretch`: open watches get 410 Gone now, and every watch started before
    /// it ends is answered 410 Gone at once, however often the client lists again.
    pub fn gone_storm(&self, stretch: Duration) {
        self.lock().gone_until = Some(Instant::now() + stretch);
        self.compact();
    }

    /// The next `requests` lists and watches are answered as API Priority and Fairness answers
    /// a request it has no room for: 429 TooManyRequests with `Retry-After: retry_after` (seconds).
    pub fn throttle(&self, requests: usize, retry_after: u64) {
        self.lock().throttle = (requests, retry_after);
    }

    /// The requests answered 429 so far, each with when.
    pub fn throttled(&self) -> Vec<(Instant, String)> {
        self.lock().throttled.clone()
    }

    /// Every list of `kind` (each page) is answered `delay` late from now on; `None` ends that.
    pub fn slow_lists(&self, kind: &str, delay: Option<Duration>) {
        let (api_version, plural) = resource_of(kind);
        let resource = format!("{api_version}/{plural}");
        let slow = &mut self.lock().slow_lists;
        slow.retain(|(slowed, _)| *slowed != resource);
        slow.extend(delay.map(|d| (resource, d)));
    }

    /// The API server goes away as a process that exited: connections are refused and open
    /// watches cut until [`ApiServer::start_again`].
    pub async fn stop(&self) {
        self.server.stop().await;
        self.disconnect_watches();
    }

    /// Serves again on the same address. With `new_history`, the store comes back with a history
    /// of its own, as after etcd is restored from a backup or replaced: every object is there,
    /// stored anew from resourceVersion 1 (uids kept), the changes before forgotten; a watch from
    /// a version of the old history the new one has not reached is answered "Too large resource
    /// version", as the API server's watch cache does.
    pub async fn start_again(&self, new_history: bool) {
        if new_history {
            let mut cluster = self.lock();
            let objects = std::mem::take(&mut cluster.objects);
            cluster.history.clear();
            cluster.listing.clear();
            cluster.watches.clear();
            cluster.rv = 0;
            cluster.compacted_below = 0;
            for (key, object) in objects {
                let mut object = object.value();
                object["metadata"].as_object_mut().expect("metadata").remove("resourceVersion");
                cluster.store(key, object);
            }
        }
        self.server.resume().await;
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }
}

impl Cluster {
    fn record(&mut self, rv: u64, key: Key, kind: &'static str, object: Stored, previous: Option<Stored>) {
        // Written once, and only when a watch wants it.
        let mut event: Option<Vec<u8>> = None;
        self.watches.retain(|w| {
            if !key.within(&w.resource, w.namespace.as_deref()) {
                return true;
            }
            let event = event.get_or_insert_with(|| line(kind, &object));
            w.tx.try_send(event.clone()).is_ok()
        });
        self.history.push(Change { rv, key, kind, object, previous });
        self.trim_history();
    }

    /// Drops the oldest changes past `history_limit` (in batches, so a long history is not
    /// shifted on every change) and expires their versions.
    fn trim_history(&mut self) {
        let Some(limit) = self.history_limit else { return };
        if self.history.len() <= limit + limit / 4 {
            return;
        }
        let drop = self.history.len() - limit;
        self.history.drain(..drop);
        if let Some(first) = self.history.first() {
            self.compacted_below = self.compacted_below.max(first.rv - 1);
        }
    }

    /// Stores `object` at a new version, keeping the uid and creation time of the object it
    /// replaces; tells the watches.
    fn store(&mut self, key: Key, mut object: Value) -> Stored {
        self.rv += 1;
        let rv = self.rv;
        let previous = self.objects.get(&key).cloned();
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(rv.to_string());
        match previous.as_ref() {
            Some(previous) => {
                metadata["uid"] = previous.metadata("uid").clone();
                metadata["creationTimestamp"] = previous.metadata("creationTimestamp").clone();
            }
            None => {
                if metadata["uid"].is_null() {
                    self.uids += 1;
                    metadata["uid"] = json!(format!("uid-{}-{}", key.name, self.uids));
                }
                if metadata["creationTimestamp"].is_null() {
                    metadata["creationTimestamp"] = json!(now());
                }
            }
        }
        let object = Stored::new(&object);
        let kind = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        self.objects.insert(key.clone(), object.clone());
        self.record(rv, key, kind, object.clone(), previous);
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Stored> {
        let previous = self.objects.remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        let mut object = previous.value();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = Stored::new(&object);
        self.record(rv, key.clone(), "DELETED", object.clone(), Some(previous));
        Some(object)
    }

    /// The objects of `resource` (in `namespace`) as they were at version `rv`, in list order:
    /// the store now, rewound through the changes made since `rv` (newest first).
    fn snapshot(&self, resource: &str, namespace: Option<&str>, rv: u64) -> Vec<(String, Stored)> {
        let mut at: BTreeMap<String, Option<&Stored>> = self
            .objects
            .iter()
            .filter(|(k, _)| k.within(resource, namespace))
            .map(|(k, v)| (k.position(), Some(v)))
            .collect();
        let since = self.history.partition_point(|c| c.rv <= rv);
        for change in self.history[since..].iter().rev().filter(|c| c.key.within(resource, namespace)) {
            at.insert(change.key.position(), change.previous.as_ref());
        }
        at.into_iter().filter_map(|(position, object)| Some((position, object?.clone()))).collect()
    }

    /// The snapshot a list at `rv` pages through, taken once per list.
    fn listing(&mut self, resource: &str, namespace: Option<&str>, rv: u64) -> Arc<Vec<(String, Stored)>> {
        let compacted_below = self.compacted_below;
        self.listing.retain(|l| l.rv >= compacted_below);
        if let Some(l) = self.listing.iter().find(|l| l.is(resource, namespace, rv)) {
            return l.items.clone();
        }
        let items = Arc::new(self.snapshot(resource, namespace, rv));
        if self.listing.len() >= LISTINGS_KEPT {
            self.listing.remove(0);
        }
        self.listing.push(Listing {
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
            rv,
            items: items.clone(),
        });
        items
    }
}

/// A request, as the API server's handler chain sees it.
struct Target<'a> {
    group_version: String,
    plural: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl Target<'_> {
    fn parse(path: &str) -> Option<Target<'_>> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group_version, rest) = match segments.as_slice() {
            ["api", v, rest @ ..] => (v.to_string(), rest),
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
            _ => return None,
        };
        let (plural, namespace, name) = match rest {
            [plural] => (*plural, None, None),
            ["namespaces", name] => ("namespaces", None, Some(*name)),
            [plural, name] => (*plural, None, Some(*name)),
            ["namespaces", ns, plural] => (*plural, Some(*ns), None),
            ["namespaces", ns, plural, name] => (*plural, Some(*ns), Some(*name)),
            _ => return None,
        };
        Some(Target { group_version, plural, namespace, name })
    }

    fn resource(&self) -> String {
        format!("{}/{}", self.group_version, self.plural)
    }

    fn key(&self, name: &str) -> Key {
        Key { resource: self.resource(), namespace: self.namespace.unwrap_or_default().into(), name: name.into() }
    }

    fn group(&self) -> &str {
        self.group_version.rsplit_once('/').map_or("", |(group, _)| group)
    }

    fn qualified(&self) -> String {
        qualified(&self.group_version, self.plural)
    }

    fn not_found(&self, name: &str) -> Reply {
        failure(404, "NotFound", &format!("{} \"{name}\" not found", self.qualified()))
    }

    /// `pods "web" is forbidden: User "…" cannot get resource "pods" in API group "" in the
    /// namespace "shop"`, word for word as the API server says it.
    fn forbidden(&self, verb: &str) -> Reply {
        let subject = match self.name {
            Some(name) => format!("{} \"{name}\"", self.qualified()),
            None => self.qualified(),
        };
        let scope = match self.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let message = format!(
            "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            self.plural,
            self.group()
        );
        let mut body = status(403, "Forbidden", &message);
        body["details"] = json!({"name": self.name.unwrap_or_default(), "group": self.group(), "kind": self.plural});
        Reply::json(403, &body)
    }
}

/// What a request asks for, by the RBAC verb it needs.
enum Op<'a> {
    Get(&'a str),
    List,
    Watch,
    Create,
    Update(&'a str),
    Delete(&'a str),
}

impl<'a> Op<'a> {
    /// `None` for a method the resource does not serve.
    fn of(req: &Request, target: &Target<'a>) -> Option<Op<'a>> {
        let watch = req.query("watch").is_some_and(|w| w == "true" || w == "1");
        Some(match (req.method.as_str(), target.name) {
            ("GET", Some(name)) => Op::Get(name),
            ("GET", None) if watch => Op::Watch,
            ("GET", None) => Op::List,
            ("POST", None) => Op::Create,
            ("PUT", Some(name)) => Op::Update(name),
            ("DELETE", Some(name)) => Op::Delete(name),
            _ => return None,
        })
    }

    fn verb(&self) -> &'static str {
        match self {
            Op::Get(_) => "get",
            Op::List => "list",
            Op::Watch => "watch",
            Op::Create => "create",
            Op::Update(_) => "update",
            Op::Delete(_) => "delete",
        }
    }
}

/// The reply, and how long to hold it back.
fn handle(cluster: &Mutex<Cluster>, req: &Request) -> (Reply, Option<Duration>) {
    let mut cluster = cluster.lock().expect("harness lock");
    cluster.requests.push(format!("{} {}", req.method, req.target));
    cluster.request_times.push(Instant::now());
    let reply = answer(&mut cluster, req);
    let path = req.target.split('?').next().unwrap_or_default();
    let is_list = req.method == "GET" && req.query("watch").is_none();
    let delay = cluster.slow_lists.iter().find(|(resource, _)| is_list && path.ends_with(resource.as_str()));
    (reply, delay.map(|(_, d)| *d))
}

fn answer(cluster: &mut Cluster, req: &Request) -> Reply {
    if req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|token| token != TOKEN) {
        return failure(401, "Unauthorized", "Unauthorized");
    }
    let path = req.target.split('?').next().unwrap_or_default();
    if let Some((namespace, name)) = token_request_path(path) {
        return token_request(cluster, req, namespace, name);
    }
    let Some(target) = Target::parse(path) else {
        return failure(404, "NotFound", "the server could not find the requested resource");
    };
    let Some(op) = Op::of(req, &target) else {
        return failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
    };
    let resource = target.resource();
    if cluster.denials.iter().any(|d| d.applies(op.verb(), &resource, target.namespace)) {
        return target.forbidden(op.verb());
    }
    if let (left @ 1.., retry_after) = cluster.throttle
        && matches!(op, Op::List | Op::Watch)
    {
        cluster.throttle.0 = left - 1;
        cluster.throttled.push((Instant::now(), format!("{} {}", req.method, req.target)));
        let mut body = status(429, "TooManyRequests", "Too many requests, please try again later.");
        body["details"] = json!({"retryAfterSeconds": retry_after});
        return Reply::Full {
            status: 429,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Retry-After".into(), retry_after.to_string()),
            ],
            body: body.to_string().into_bytes(),
        };
    }
    match op {
        Op::Get(name) => match cluster.objects.get(&target.key(name)) {
            Some(object) => object.reply(200),
            None => target.not_found(name),
        },
        Op::Watch => watch_from(cluster, &target, req),
        Op::List => list(cluster, &target, req),
        Op::Create => create(cluster, &target, req),
        Op::Update(name) => update(cluster, &target, name, req),
        Op::Delete(name) => delete(cluster, &target, name, req),
    }
}

/// `/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: the namespace and service account.
fn token_request_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [namespace, "serviceaccounts", name, "token"] => Some((namespace, name)),
        _ => None,
    }
}

/// The API server's TokenRequest (authentication.k8s.io/v1): `create` on `serviceaccounts/token`
/// under RBAC, the service account must exist, audiences are required, and no token lives less
/// than ten minutes. The token is JWT-like: `header.harness.{audience}.{namespace}.{name}.{nonce}`,
/// the audience and service account in the clear for script plugins to check with `case`, the
/// nonce random: each token is a secret no other text contains.
fn token_request(cluster: &mut Cluster, req: &Request, namespace: &str, name: &str) -> Reply {
    if req.method != "POST" {
        return failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
    }
    if cluster.denials.iter().any(|d| d.applies("create", "v1/serviceaccounts/token", Some(namespace))) {
        // The API server names the parent resource and the subresource apart.
        let message = format!(
            "serviceaccounts \"{name}\" is forbidden: User \"{USER}\" cannot create resource \"serviceaccounts/token\" \
             in API group \"\" in the namespace \"{namespace}\""
        );
        let mut body = status(403, "Forbidden", &message);
        body["details"] = json!({"name": name, "group": "", "kind": "serviceaccounts"});
        return Reply::json(403, &body);
    }
    let account = Key { resource: "v1/serviceaccounts".into(), namespace: namespace.into(), name: name.into() };
    if !cluster.objects.contains_key(&account) {
        return failure(404, "NotFound", &format!("serviceaccounts \"{name}\" not found"));
    }
    let Ok(request) = serde_json::from_slice::<Value>(&req.body) else {
        return failure(400, "BadRequest", "the request body is not a JSON object");
    };
    let audiences: Vec<String> = request["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if audiences.is_empty() {
        return failure(
            422,
            "Invalid",
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.audiences: Required value",
        );
    }
    let seconds = request["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    if seconds < 600 {
        return failure(
            422,
            "Invalid",
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        );
    }
    let nonce: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new()).expect("random bytes").expose();
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("eyJhbGciOiJSUzI1NiJ9.harness.{}.{namespace}.{name}.{nonce}", audiences.join(","));
    cluster.issued_tokens.push(token.clone());
    let expires = k8s_openapi::jiff::Timestamp::now().as_second() + seconds;
    let expires = k8s_openapi::jiff::Timestamp::from_second(expires).expect("a time in range").to_string();
    let mut answer = request.clone();
    answer["kind"] = json!("TokenRequest");
    answer["apiVersion"] = json!("authentication.k8s.io/v1");
    answer["spec"]["expirationSeconds"] = json!(seconds);
    answer["status"] = json!({"token": token, "expirationTimestamp": expires});
    Reply::json(201, &answer)
}

fn watch_from(cluster: &mut Cluster, target: &Target, req: &Request) -> Reply {
    let resource = target.resource();
    let from: u64 = req.query("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (tx, rx) = mpsc::channel(1024);
    let storm = cluster.gone_until.is_some_and(|until| Instant::now() < until);
    if from < cluster.compacted_below || storm {
        let _ = tx.try_send(line("ERROR", &status(410, "Expired", "too old resource version")));
    } else if from > cluster.rv {
        // The watch cache's answer to a version it has not reached (after waiting for it).
        let message = format!("Too large resource version: {from}, current: {}", cluster.rv);
        let mut error = status(504, "Timeout", &message);
        error["details"] = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                                  "retryAfterSeconds": 1});
        let _ = tx.try_send(line("ERROR", &error));
    } else {
        for change in cluster.history.iter().filter(|c| c.rv > from && c.key.within(&resource, target.namespace)) {
            let _ = tx.try_send(line(change.kind, &change.object));
        }
        cluster.watches.push(Watch { resource, namespace: target.namespace.map(str::to_string), tx });
    }
    Reply::Stream { status: 200, headers: vec![("Content-Type".into(), "application/json".into())], chunks: rx }
}

/// A page of the snapshot the first page fixed: later pages show the objects as they were
/// then, whatever changed since, until compaction expires that version.
fn list(cluster: &mut Cluster, target: &Target, req: &Request) -> Reply {
    let (rv, after) = match req.query("continue").filter(|c| !c.is_empty()) {
        None => (cluster.rv, None),
        Some(token) => match decode_continue(&token) {
            Err(e) => return failure(400, "BadRequest", &format!("continue key is not valid: {e}")),
            Ok((rv, _)) if rv < cluster.compacted_below || rv > cluster.rv => {
                return failure(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            Ok((rv, after)) => (rv, Some(after)),
        },
    };
    let limit = req.query("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let limit = cluster.page_size.map_or(limit, |p| p.min(limit)).max(1);
    let items = cluster.listing(&target.resource(), target.namespace, rv);
    let start = after.as_ref().map_or(0, |a| items.partition_point(|(p, _)| p <= a));
    let rest = &items[start..];
    let page: Vec<&Stored> = rest.iter().take(limit).map(|(_, v)| v).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let ended = rest.len() == page.len();
    if !ended {
        // A page holds at least one item (limit >= 1), so there is a last one to go on after.
        let (last, _) = &rest[page.len() - 1];
        metadata["continue"] = json!(encode_continue(rv, last));
        metadata["remainingItemCount"] = json!(rest.len() - page.len());
    }
    let kind = kind_of(&target.group_version, target.plural).map_or("List".to_string(), |k| format!("{k}List"));
    // Written around the items' stored JSON.
    let head = json!({"kind": kind, "apiVersion": target.group_version, "metadata": metadata}).to_string();
    let mut body = Vec::with_capacity(head.len() + page.iter().map(|item| item.json().len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.json().as_bytes());
    }
    body.extend_from_slice(b"]}");
    if ended {
        cluster.lists_done.push((target.resource(), Instant::now()));
        let resource = target.resource();
        cluster.listing.retain(|l| !l.is(&resource, target.namespace, rv));
    }
    Reply::Full { status: 200, headers: vec![("Content-Type".into(), "application/json".into())], body }
}

/// The request body as an object of the target's resource, or the API server's 400.
fn body_object(target: &Target, req: &Request) -> Result<Value, Reply> {
    let mut object: Value = serde_json::from_slice(&req.body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| failure(400, "BadRequest", "the request body is not a JSON object"))?;
    if let Some(ns) = target.namespace {
        match object["metadata"]["namespace"].as_str() {
            None => object["metadata"]["namespace"] = json!(ns),
            Some(given) if given != ns => {
                return Err(failure(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(_) => {}
        }
    }
    object["apiVersion"] = json!(target.group_version);
    if let Some(kind) = kind_of(&target.group_version, target.plural) {
        object["kind"] = json!(kind);
    }
    Ok(object)
}

fn create(cluster: &mut Cluster, target: &Target, req: &Request) -> Reply {
    let mut object = match body_object(target, req) {
        Ok(object) => object,
        Err(reply) => return reply,
    };
    let name = match (object["metadata"]["name"].as_str(), object["metadata"]["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) => format!("{prefix}{:05x}", cluster.rv + 1),
        _ => {
            let kind = object["kind"].as_str().unwrap_or_default();
            let message =
                format!("{kind} \"\" is invalid: metadata.name: Required value: name or generateName is required");
            return failure(422, "Invalid", &message);
        }
    };
    object["metadata"]["name"] = json!(name);
    let key = target.key(&name);
    if cluster.objects.contains_key(&key) {
        let mut body = status(409, "AlreadyExists", &format!("{} \"{name}\" already exists", target.qualified()));
        body["details"] = json!({"name": name, "group": target.group(), "kind": target.plural});
        return Reply::json(409, &body);
    }
    // The server owns these: a client's values are not kept.
    for field in ["resourceVersion", "uid", "creationTimestamp"] {
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove(field);
        }
    }
    cluster.store(key, object).reply(201)
}

fn conflict(target: &Target, name: &str, why: &str) -> Reply {
    let message = format!("Operation cannot be fulfilled on {} \"{name}\": {why}", target.qualified());
    let mut body = status(409, "Conflict", &message);
    body["details"] = json!({"name": name, "group": target.group(), "kind": target.plural});
    Reply::json(409, &body)
}

fn update(cluster: &mut Cluster, target: &Target, name: &str, req: &Request) -> Reply {
    let object = match body_object(target, req) {
        Ok(object) => object,
        Err(reply) => return reply,
    };
    if object["metadata"]["name"].as_str() != Some(name) {
        let given = object["metadata"]["name"].as_str().unwrap_or_default();
        return failure(
            400,
            "BadRequest",
            &format!("the name of the object ({given}) does not match the name on the URL ({name})"),
        );
    }
    let key = target.key(name);
    let Some(current) = cluster.objects.get(&key) else { return target.not_found(name) };
    // An update without a resourceVersion is unconditional, as for most resources.
    let expected = object["metadata"]["resourceVersion"].as_str().filter(|rv| !rv.is_empty());
    if expected.is_some_and(|rv| Some(rv) != current.metadata("resourceVersion").as_str()) {
        return conflict(
            target,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    cluster.store(key, object).reply(200)
}

fn delete(cluster: &mut Cluster, target: &Target, name: &str, req: &Request) -> Reply {
    let key = target.key(name);
    let Some(current) = cluster.objects.get(&key) else { return target.not_found(name) };
    // DeleteOptions may carry preconditions; an unreadable body is treated as none.
    let options: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
        let (wanted, actual) = (&options["preconditions"][field], current.metadata(field));
        if let Some(wanted) = wanted.as_str().filter(|w| Some(*w) != actual.as_str()) {
            let actual = actual.as_str().unwrap_or_default();
            let why =
                format!("Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}");
            return conflict(target, name, &why);
        }
    }
    let object = cluster.remove(&key).expect("the object was just found");
    let details = json!({"name": name, "group": target.group(), "kind": target.plural, "uid": object.metadata("uid")});
    Reply::json(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    )
}
