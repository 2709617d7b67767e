//! The cluster inventory through the real `kube` client against the API-server harness:
//! watch scenarios step by step, and `pullcheck check` against a cluster.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pullcheck::inventory::WorkloadKind;
use pullcheck::inventory::selection::Selection;
use pullcheck::inventory::store::{SharedStore, Store};
use pullcheck::sources::cluster::{DEFAULT_PAGE_SIZE, Lists, scopes, watch_scope};
use serde_json::json;
use support::apiserver::ApiServer;
use support::{eventually, workload};

const WAIT: Duration = Duration::from_secs(10);

/// One watcher task per scope, with the kind it watches.
fn start_watchers(api: &ApiServer, store: &SharedStore) -> Vec<(WorkloadKind, tokio::task::JoinHandle<()>)> {
    let client = api.client();
    let lists = Lists::new(DEFAULT_PAGE_SIZE);
    scopes(None)
        .into_iter()
        .map(|scope| (scope.kind, tokio::spawn(watch_scope(client.clone(), scope, store.clone(), lists.clone()))))
        .collect()
}

/// `Kind/ns/name=image,...` of the selected records.
fn inventory(store: &SharedStore, selection: &Selection) -> BTreeSet<String> {
    let store = store.read().expect("lock");
    store
        .selected(selection)
        .iter()
        .map(|r| {
            let images: Vec<&str> = r.containers.iter().map(|c| c.image.as_str()).collect();
            format!("{}/{}/{}={}", r.workload.kind, r.workload.namespace, r.workload.name, images.join(","))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn owned(mut object: serde_json::Value, owner_kind: &str) -> serde_json::Value {
    object["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "apps/v1", "kind": owner_kind, "name": "owner", "uid": "u", "controller": true}]);
    object
}

#[tokio::test]
async fn watch_scenarios_keep_the_inventory_exact() {
    let api = ApiServer::start().await;
    api.page_size(2);
    api.apply(workload("Deployment", "shop", "web", "nginx:1.27"));
    api.apply(owned(workload("ReplicaSet", "shop", "web-5d8", "nginx:1.27"), "Deployment"));
    api.apply(owned(workload("Pod", "shop", "web-5d8-x", "nginx:1.27"), "ReplicaSet"));
    api.apply(workload("Pod", "shop", "debug", "busybox"));
    api.apply(workload("CronJob", "ops", "backup", "restic:0.16"));
    api.apply(owned(workload("Job", "ops", "backup-123", "restic:0.16"), "CronJob"));
    api.apply(workload("StatefulSet", "db", "pg", "postgres:16"));
    api.apply(workload("DaemonSet", "kube-system", "agent", "agent:1"));
    let mut rc = workload("ReplicationController", "legacy", "old", "legacy:1");
    rc["spec"]["replicas"] = json!(2);
    api.apply(rc);
    let mut with_sidecar = workload("Deployment", "shop", "api", "api:2");
    with_sidecar["spec"]["template"]["spec"]["initContainers"] =
        json!([{"name": "proxy", "image": "envoy:1.30", "restartPolicy": "Always"}]);
    api.apply(with_sidecar);

    let store: SharedStore = Arc::new(RwLock::new(Store::default()));
    let watchers = start_watchers(&api, &store);
    let all_scopes = scopes(None);
    assert!(eventually(WAIT, || store.read().expect("lock").is_synced(&all_scopes, false)).await, "inventory syncs");
    let everything = Selection::default();
    let initial = set(&[
        "CronJob/ops/backup=restic:0.16",
        "DaemonSet/kube-system/agent=agent:1",
        "Deployment/shop/api=envoy:1.30,api:2",
        "Deployment/shop/web=nginx:1.27",
        "Pod/shop/debug=busybox",
        "ReplicationController/legacy/old=legacy:1",
        "StatefulSet/db/pg=postgres:16",
    ]);
    assert_eq!(inventory(&store, &everything), initial, "managed ReplicaSets, Jobs and Pods are not workloads");

    // Image changed.
    api.apply(workload("Deployment", "shop", "web", "nginx:1.28"));
    let changed = |s: &BTreeSet<String>| s.contains("Deployment/shop/web=nginx:1.28");
    assert!(eventually(WAIT, || changed(&inventory(&store, &everything))).await, "image change arrives");

    // Scaled to zero: left out unless asked for.
    let mut scaled = workload("StatefulSet", "db", "pg", "postgres:16");
    scaled["spec"]["replicas"] = json!(0);
    api.apply(scaled);
    assert!(eventually(WAIT, || !inventory(&store, &everything).contains("StatefulSet/db/pg=postgres:16")).await);
    let with_disabled =
        Selection { include_disabled: pullcheck::inventory::selection::IncludeDisabled::all(), ..Selection::default() };
    assert!(inventory(&store, &with_disabled).contains("StatefulSet/db/pg=postgres:16"));

    // Deleted.
    api.delete("Pod", "shop", "debug");
    assert!(eventually(WAIT, || !inventory(&store, &everything).contains("Pod/shop/debug=busybox")).await);

    // 410 Gone mid-watch, with changes while the watchers relist: nothing lost, nothing duplicated.
    api.compact();
    api.delete("CronJob", "ops", "backup");
    api.apply(workload("Pod", "shop", "after-410", "alpine:3.20"));
    let expected_after_410 = set(&[
        "DaemonSet/kube-system/agent=agent:1",
        "Deployment/shop/api=envoy:1.30,api:2",
        "Deployment/shop/web=nginx:1.28",
        "Pod/shop/after-410=alpine:3.20",
        "ReplicationController/legacy/old=legacy:1",
    ]);
    assert!(
        eventually(WAIT, || inventory(&store, &everything) == expected_after_410).await,
        "{:?}",
        inventory(&store, &everything)
    );
    assert_eq!(store.read().expect("lock").len(), 6, "five selected plus the disabled StatefulSet, no duplicates");
    let cronjob_lists = |api: &ApiServer| {
        api.requests().iter().filter(|r| r.starts_with("GET /apis/batch/v1/cronjobs?") && !r.contains("watch=")).count()
    };
    assert!(cronjob_lists(&api) >= 2, "the 410 made the watcher list again: {:?}", api.requests());
    let watches_before = api.requests().iter().filter(|r| r.contains("watch=")).count();

    // Dropped connections (an API-server restart) and bookmarks.
    api.bookmark();
    api.disconnect_watches();
    api.apply(workload("Job", "ops", "one-off", "migrate:7"));
    assert!(eventually(WAIT, || inventory(&store, &everything).contains("Job/ops/one-off=migrate:7")).await);
    assert!(eventually(WAIT, || api.open_watches() == all_scopes.len()).await, "every watcher reconnected");
    assert_eq!(inventory(&store, &everything).len(), 6);
    let watches_after = api.requests().iter().filter(|r| r.contains("watch=")).count();
    assert!(watches_after >= watches_before + all_scopes.len(), "watches resumed after the disconnect");
    for (_, watcher) in watchers {
        watcher.abort();
    }
}

#[tokio::test]
async fn a_forbidden_kind_is_skipped_and_the_others_work() {
    let api = ApiServer::start().await;
    api.forbid("DaemonSet");
    api.apply(workload("DaemonSet", "kube-system", "agent", "agent:1"));
    api.apply(workload("Deployment", "shop", "web", "nginx:1.27"));
    let store: SharedStore = Arc::new(RwLock::new(Store::default()));
    let watchers = start_watchers(&api, &store);
    let all_scopes = scopes(None);
    assert!(eventually(WAIT, || store.read().expect("lock").is_synced(&all_scopes, false)).await, "ready despite 403");
    assert_eq!(inventory(&store, &Selection::default()), set(&["Deployment/shop/web=nginx:1.27"]));

    // The others go on watching.
    api.apply(workload("Deployment", "shop", "api", "api:1"));
    assert!(eventually(WAIT, || inventory(&store, &Selection::default()).len() == 2).await);

    // The DaemonSet watcher gave up until its RBAC recheck (minutes away): one request so far.
    let daemonset_requests: Vec<String> =
        api.requests().into_iter().filter(|r| r.contains("/apis/apps/v1/daemonsets")).collect();
    assert_eq!(daemonset_requests.len(), 1, "a 403 is not retried at once: {daemonset_requests:?}");
    assert!(daemonset_requests[0].starts_with("GET /apis/apps/v1/daemonsets?"), "the list: {daemonset_requests:?}");
    let daemonsets = watchers.iter().find(|(kind, _)| *kind == WorkloadKind::DaemonSet).expect("a DaemonSet scope");
    assert!(!daemonsets.1.is_finished(), "it will try again");
    for (_, watcher) in watchers {
        watcher.abort();
    }
}

/// Two initial lists at a time, one relist at a time (`Lists`): at sync pullcheck decodes one
/// list's page while the API server serves another's; a forced relist reaches every watch at
/// once, and its lists take turns.
#[tokio::test]
async fn initial_lists_go_two_at_a_time_and_relists_one_at_a_time() {
    let api = ApiServer::start().await;
    api.page_size(1);
    for name in ["a", "b", "c"] {
        api.apply(workload("Deployment", "shop", name, "nginx:1.27"));
        api.apply(workload("StatefulSet", "db", name, "postgres:16"));
    }
    let page = Duration::from_millis(200);
    api.slow_lists("Deployment", Some(page));
    api.slow_lists("StatefulSet", Some(page));
    // From a kind's first page asked to its last page answered (each page `page` late).
    let span = |plural: &str, since: Instant| {
        let asked: Vec<Instant> = (api.timed_requests().into_iter())
            .filter(|(at, r)| *at >= since && r.contains(&format!("/{plural}?")) && !r.contains("watch="))
            .map(|(at, _)| at)
            .collect();
        (asked.len(), asked.first().copied(), asked.last().map(|last| *last + page))
    };
    let overlap = |since: Instant| match (span("deployments", since), span("statefulsets", since)) {
        ((_, Some(d0), Some(d1)), (_, Some(s0), Some(s1))) => d0 < s1 && s0 < d1,
        spans => panic!("both kinds listed: {spans:?}"),
    };
    let listed = |since: Instant| span("deployments", since).0 >= 2 && span("statefulsets", since).0 >= 2;

    let start = Instant::now();
    let store: SharedStore = Arc::new(RwLock::new(Store::default()));
    let watchers = start_watchers(&api, &store);
    let all_scopes = scopes(None);
    assert!(eventually(WAIT, || store.read().expect("lock").is_synced(&all_scopes, false)).await);
    assert!(listed(start), "paged: {:?}", api.requests());
    assert!(overlap(start), "the two slow initial lists ran side by side: {:?}", api.timed_requests());

    let compacted = Instant::now();
    api.compact();
    // The cluster moves on: the harness expires the version it compacted at itself, and a
    // watch resumed there would be relisted again and again.
    api.apply(workload("Deployment", "shop", "d", "nginx:1.27"));
    let relisted = || listed(compacted) && store.read().expect("lock").len() == 7;
    assert!(eventually(WAIT, relisted).await, "both listed again: {:?}", api.requests());
    let since = |since: Instant| -> Vec<(Duration, String)> {
        (api.timed_requests().into_iter()).filter(|(at, _)| *at >= since).map(|(at, r)| (at - since, r)).collect()
    };
    assert!(!overlap(compacted), "the relists took turns: {:#?}", since(compacted));
    for (_, watcher) in watchers {
        watcher.abort();
    }
}
