//! Inventory at scale through the API-server harness and the real kube client: 10,000
//! workloads (20,000 containers, 5,000 unique images). Time to a complete inventory (paged
//! list for `check`, watchers for `run`), live heap of the store per workload (counting
//! allocator), resident memory, and the live heap each owned object (a Deployment's ReplicaSet
//! and Pods, which pullcheck keeps only for what they run) adds.
//!
//! `cargo bench --bench inventory_scale` (env BENCH_WORKLOADS).

#[path = "../tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pullcheck::inventory::WorkloadKind;
use pullcheck::inventory::selection::Selection;
use pullcheck::inventory::store::{SharedStore, Store, WatchScope};
use pullcheck::sources::cluster::{DEFAULT_PAGE_SIZE, Lists, list_workloads, scopes, watch_scope};
use support::apiserver::ApiServer;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_kib() -> u64 {
    support::process::status_kib(std::process::id(), "VmRSS:")
}

/// The image pool: containers and sidecars draw from the same `unique_images` references.
fn image(n: usize) -> String {
    format!("registry.example/team-{}/app:{n}", n % 100)
}

fn main() {
    let workloads: usize = std::env::var("BENCH_WORKLOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let unique_images = workloads / 2;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let api = ApiServer::start().await;
        let namespaces = 50;
        for i in 0..workloads {
            let mut object = support::workload(
                "Deployment",
                &format!("ns-{}", i % namespaces),
                &format!("app-{i}"),
                &image(i % unique_images),
            );
            object["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .expect("containers")
                .push(serde_json::json!({"name": "sidecar", "image": image((i + unique_images / 2) % unique_images)}));
            object["spec"]["template"]["spec"]["imagePullSecrets"] = serde_json::json!([{"name": "regcred"}]);
            api.apply(object);
        }
        let client = api.client();

        let started = Instant::now();
        let snapshot = list_workloads(&client, None, DEFAULT_PAGE_SIZE).await;
        let list_time = started.elapsed();
        assert_eq!(snapshot.records.len(), workloads);
        let unique: usize = snapshot
            .records
            .iter()
            .flat_map(|r| r.containers.iter().map(|c| c.image.as_str()))
            .collect::<HashSet<&str>>()
            .len();
        let containers: usize = snapshot.records.iter().map(|r| r.containers.len()).sum();
        drop(snapshot);

        let live_before = LIVE.load(Ordering::Relaxed);
        let rss_before = rss_kib();
        let store: SharedStore = Arc::new(RwLock::new(Store::default()));
        // Workload kinds first; the owned kinds (ReplicaSets, Pods) after, into the same store.
        let (owned_kinds, all): (Vec<_>, Vec<_>) = scopes(None)
            .into_iter()
            .partition(|s| matches!(s.kind, WorkloadKind::ReplicaSet | WorkloadKind::Pod));
        let started = Instant::now();
        let watchers = watch_until_synced(&client, &all, &store).await;
        let watch_time = started.elapsed();
        // Count what stays once every watcher is in its watch stream, not after a pause that hopes so.
        let watching = support::eventually(Duration::from_secs(60), || api.open_watches() == all.len()).await;
        assert!(watching, "every watcher opened its watch: {} of {}", api.open_watches(), all.len());
        let live_after = LIVE.load(Ordering::Relaxed);
        let rss_after = rss_kib();
        assert_eq!(store.read().expect("lock").selected(&Selection::default()).len(), workloads);
        let per_workload = (live_after.saturating_sub(live_before)) as f64 / workloads as f64;

        // Each Deployment's ReplicaSet and its two Pods, as their controllers would make them:
        // what they cost once the store holds them is the owned objects' share.
        let (owned, live_owned) = owned_objects(&api, workloads, namespaces, unique_images, &store, &owned_kinds).await;
        let per_owned = live_owned as f64 / owned as f64;

        println!("inventory of {workloads} workloads, {containers} containers, {unique} unique images:");
        println!("  paged list (check)        {:>8.0} ms", list_time.as_secs_f64() * 1000.0);
        println!("  watchers synced (run)     {:>8.0} ms", watch_time.as_secs_f64() * 1000.0);
        println!(
            "  store live heap           {:>8.0} KiB ({per_workload:.0} bytes per workload, goal < 1024)",
            (live_after - live_before) as f64 / 1024.0
        );
        println!(
            "  resident memory           {:>8} KiB (process, API-server harness included; +{} KiB for the store)",
            rss_after,
            rss_after.saturating_sub(rss_before)
        );
        println!(
            "  owned objects             {:>8.0} KiB for {owned} ReplicaSets and Pods ({per_owned:.0} bytes per owned object, goal < 100)",
            live_owned as f64 / 1024.0
        );
        for w in watchers {
            w.abort();
        }
    });
}

/// One ReplicaSet per Deployment (`app-{i}-5d8f7c9b6`) and two Pods under it running both
/// containers' images (imageID the image's digest), applied to the harness and watched into
/// `store`: the objects and the live heap they added once synced.
async fn owned_objects(
    api: &ApiServer,
    workloads: usize,
    namespaces: usize,
    unique_images: usize,
    store: &SharedStore,
    scopes: &[WatchScope],
) -> (usize, usize) {
    let owner = |kind: &str, name: &str| serde_json::json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}]);
    let digest = |n: usize| format!("sha256:{n:064x}");
    for i in 0..workloads {
        let namespace = format!("ns-{}", i % namespaces);
        let (deployment, replica_set) = (format!("app-{i}"), format!("app-{i}-5d8f7c9b6"));
        let mut rs = support::workload("ReplicaSet", &namespace, &replica_set, &image(i % unique_images));
        rs["metadata"]["ownerReferences"] = owner("Deployment", &deployment);
        api.apply(rs);
        for suffix in ["x7k2p", "q9m4z"] {
            let mut pod =
                support::workload("Pod", &namespace, &format!("{replica_set}-{suffix}"), &image(i % unique_images));
            pod["metadata"]["ownerReferences"] = owner("ReplicaSet", &replica_set);
            let sidecar = (i + unique_images / 2) % unique_images;
            pod["status"] = serde_json::json!({"containerStatuses": [
                {"name": "main", "imageID": format!("{}@{}", image(i % unique_images), digest(i % unique_images))},
                {"name": "sidecar", "imageID": format!("{}@{}", image(sidecar), digest(sidecar))}
            ]});
            api.apply(pod);
        }
    }
    let live_before = LIVE.load(Ordering::Relaxed);
    let generation = store.read().expect("lock").running_generation;
    let watchers = watch_until_synced(&api.client(), scopes, store).await;
    assert!(store.read().expect("lock").running_generation > generation, "the pods arrived");
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(live_before);
    for w in watchers {
        w.abort();
    }
    (workloads * 3, live)
}

/// Watchers of `scopes` into `store`, returned once every scope has synced.
async fn watch_until_synced(
    client: &kube::Client,
    scopes: &[WatchScope],
    store: &SharedStore,
) -> Vec<tokio::task::JoinHandle<()>> {
    let lists = Lists::new(DEFAULT_PAGE_SIZE);
    let watchers = scopes
        .iter()
        .cloned()
        .map(|scope| tokio::spawn(watch_scope(client.clone(), scope, store.clone(), lists.clone())))
        .collect();
    while !store.read().expect("lock").is_synced(scopes, false) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    watchers
}
