//! The API-server harness behaves like the real one where pullcheck relies on it, as the real
//! `kube` client sees it: consistent paged lists, expired continue tokens, writes with their
//! conflicts and watch events, unserved methods, RBAC denials per verb and namespace, and
//! TokenRequest (service account tokens) with its validation.

mod support;

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::apiserver::{ApiServer, USER};
use support::workload;

const WAIT: Duration = Duration::from_secs(10);

/// The API server's answer to a refused request: (code, reason, message).
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect()
}

fn image(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.containers[0].image.clone()).unwrap_or_default()
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
    }))
    .expect("a Lease")
}

#[tokio::test]
async fn pages_show_the_snapshot_of_the_first_page_whatever_changes_meanwhile() {
    let api = ApiServer::start().await;
    for name in ["p0", "p1", "p2", "p3", "p4"] {
        api.apply(workload("Pod", "shop", name, "app:1"));
    }
    let pods: Api<Pod> = Api::namespaced(api.client(), "shop");
    let first = pods.list(&ListParams::default().limit(2)).await.expect("first page");
    assert_eq!(names(&first.items), ["p0", "p1"]);
    let snapshot = first.metadata.resource_version.clone().expect("resourceVersion");

    // Between pages: one deleted, one changed, one added.
    api.delete("Pod", "shop", "p2");
    api.apply(workload("Pod", "shop", "p3", "app:2"));
    api.apply(workload("Pod", "shop", "p5", "app:1"));

    let mut rest = Vec::new();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = pods.list(&ListParams::default().limit(2).continue_token(&t)).await.expect("next page");
        assert_eq!(page.metadata.resource_version.as_deref(), Some(snapshot.as_str()), "one snapshot for all pages");
        rest.extend(page.items);
        token = page.metadata.continue_;
    }
    assert_eq!(names(&rest), ["p2", "p3", "p4"], "as they were at the first page");
    assert_eq!(image(&rest[1]), "app:1", "p3 before its change");

    let now = pods.list(&ListParams::default()).await.expect("a new list");
    assert_eq!(names(&now.items), ["p0", "p1", "p3", "p4", "p5"]);
    assert_eq!(image(&now.items[2]), "app:2");
    assert_ne!(now.metadata.resource_version, Some(snapshot));
}

#[tokio::test]
async fn pages_follow_the_api_servers_key_order_across_namespaces() {
    let api = ApiServer::start().await;
    // etcd orders `team-a/x` before `team/x` ('-' sorts before '/'); a token's position must too.
    for (ns, name) in [("team", "x"), ("team-a", "y"), ("team", "a"), ("team-a", "b")] {
        api.apply(workload("Pod", ns, name, "app:1"));
    }
    let pods: Api<Pod> = Api::all(api.client());
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(1);
    loop {
        let page = pods.list(&params).await.expect("page");
        seen.extend(page.items.iter().map(|p| {
            let meta = &p.metadata;
            format!("{}/{}", meta.namespace.as_deref().unwrap_or("?"), meta.name.as_deref().unwrap_or("?"))
        }));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => params = ListParams::default().limit(1).continue_token(&token),
            None => break,
        }
    }
    assert_eq!(seen, ["team-a/b", "team-a/y", "team/a", "team/x"]);
}

#[tokio::test]
async fn a_continue_token_of_a_compacted_version_is_410_expired_and_a_malformed_one_400() {
    let api = ApiServer::start().await;
    for name in ["p0", "p1", "p2"] {
        api.apply(workload("Pod", "shop", name, "app:1"));
    }
    let pods: Api<Pod> = Api::namespaced(api.client(), "shop");
    let first = pods.list(&ListParams::default().limit(2)).await.expect("first page");
    let token = first.metadata.continue_.expect("more to list");
    api.compact();
    let (code, reason, message) = refusal(pods.list(&ListParams::default().limit(2).continue_token(&token)).await);
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    assert_eq!(
        message,
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."
    );
    assert_eq!(names(&pods.list(&ListParams::default()).await.expect("a new list").items), ["p0", "p1", "p2"]);

    let (code, reason, message) = refusal(pods.list(&ListParams::default().continue_token("not-a-token")).await);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"), "{message}");
    assert!(message.starts_with("continue key is not valid"), "{message}");
}

#[tokio::test]
async fn writes_conflict_like_the_api_server_and_are_watched() {
    let api = ApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "shop");
    let listed = leases.list(&ListParams::default()).await.expect("list");
    let from = listed.metadata.resource_version.expect("resourceVersion");
    let events = leases.watch(&WatchParams::default(), &from).await.expect("watch").boxed();

    let created = leases.create(&PostParams::default(), &lease("leader", "a")).await.expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some(), "{meta:?}");
    assert_eq!(meta.namespace.as_deref(), Some("shop"), "from the path");
    let first_rv = meta.resource_version.clone().expect("resourceVersion");

    let (code, reason, message) = refusal(leases.create(&PostParams::default(), &lease("leader", "b")).await);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (409, "AlreadyExists", "leases.coordination.k8s.io \"leader\" already exists")
    );

    let mut taken = created.clone();
    taken.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let updated =
        leases.replace("leader", &PostParams::default(), &taken).await.expect("update at the current version");
    assert_ne!(updated.metadata.resource_version.as_deref(), Some(first_rv.as_str()));
    assert_eq!(updated.metadata.uid, created.metadata.uid, "the same object");
    assert_eq!(updated.metadata.creation_timestamp, created.metadata.creation_timestamp);

    // `taken` still carries the first version: someone else updated since.
    let (code, reason, message) = refusal(leases.replace("leader", &PostParams::default(), &taken).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let mut missing = lease("follower", "c");
    missing.metadata.namespace = Some("shop".into());
    let (code, reason, _) = refusal(leases.replace("follower", &PostParams::default(), &missing).await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    leases.delete("leader", &DeleteParams::default()).await.expect("delete");
    let (code, reason, message) = refusal(leases.delete("leader", &DeleteParams::default()).await);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "leases.coordination.k8s.io \"leader\" not found")
    );
    assert!(api.object("Lease", "shop", "leader").is_none());

    let seen: Vec<(String, Option<String>)> = tokio::time::timeout(
        WAIT,
        events
            .map_ok(|event| match event {
                WatchEvent::Added(l) => ("ADDED".to_string(), l.spec.and_then(|s| s.holder_identity)),
                WatchEvent::Modified(l) => ("MODIFIED".to_string(), l.spec.and_then(|s| s.holder_identity)),
                WatchEvent::Deleted(l) => ("DELETED".to_string(), l.spec.and_then(|s| s.holder_identity)),
                other => (format!("{other:?}"), None),
            })
            .take(3)
            .try_collect(),
    )
    .await
    .expect("three events within the bound")
    .expect("watch events");
    let holder = |s: &str| Some(s.to_string());
    assert_eq!(
        seen,
        [("ADDED".into(), holder("a")), ("MODIFIED".into(), holder("b")), ("DELETED".into(), holder("b"))],
        "refused writes make no event"
    );
}

#[tokio::test]
async fn events_of_both_apis_are_kept_apart() {
    let api = ApiServer::start().await;
    let client = api.client();
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "shop");
    let new: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "shop");
    let event =
        json!({"metadata": {"name": "web.1"}, "reason": "Pulled", "involvedObject": {"kind": "Pod", "name": "web"}});
    core.create(&PostParams::default(), &serde_json::from_value(event).expect("core event")).await.expect("create");
    let event = json!({"metadata": {"name": "web.2"}, "reason": "Pulled", "eventTime": "2025-01-01T00:00:00.000000Z",
                       "reportingController": "pullcheck", "reportingInstance": "pullcheck-0", "action": "Check"});
    new.create(&PostParams::default(), &serde_json::from_value(event).expect("events.k8s.io event"))
        .await
        .expect("create");
    let core_names: Vec<_> = core
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|e| e.metadata.name)
        .collect();
    let new_names: Vec<_> = new
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|e| e.metadata.name)
        .collect();
    assert_eq!((core_names, new_names), (vec!["web.1".to_string()], vec!["web.2".to_string()]));
}

#[tokio::test]
async fn an_unserved_method_is_405() {
    let api = ApiServer::start().await;
    api.apply(workload("Pod", "shop", "web", "app:1"));
    let pods: Api<Pod> = Api::namespaced(api.client(), "shop");
    let patch = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    let (code, reason, _) = refusal(pods.patch("web", &PatchParams::default(), &patch).await);
    assert_eq!((code, reason.as_str()), (405, "MethodNotAllowed"));
    let labels = api.object("Pod", "shop", "web").map(|p| p["metadata"]["labels"].clone());
    assert_eq!(labels, Some(serde_json::Value::Null), "left unchanged");
}

#[tokio::test]
async fn rbac_denies_per_verb_and_namespace_in_the_api_servers_words() {
    let api = ApiServer::start().await;
    api.apply(workload("Pod", "shop", "web", "app:1"));
    api.apply(workload("Pod", "ops", "agent", "agent:1"));
    api.forbid_verb("list", "Pod", Some("shop"));
    let client = api.client();
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let ops: Api<Pod> = Api::namespaced(client.clone(), "ops");
    let everywhere: Api<Pod> = Api::all(client.clone());

    let (code, reason, message) = refusal(shop.list(&ListParams::default()).await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        format!(
            "pods is forbidden: User \"{USER}\" cannot list resource \"pods\" in API group \"\" in the namespace \"shop\""
        )
    );
    assert_eq!(names(&ops.list(&ListParams::default()).await.expect("list elsewhere").items), ["agent"]);
    let (code, _, message) = refusal(everywhere.list(&ListParams::default()).await);
    assert_eq!(code, 403, "no cluster-wide grant when one namespace is denied");
    assert_eq!(
        message,
        format!(
            "pods is forbidden: User \"{USER}\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
        )
    );
    assert!(shop.get("web").await.is_ok(), "get is another verb");

    // Watch apart from list: the list a watcher starts with works, the watch does not.
    api.forbid_verb("watch", "Pod", None);
    assert!(ops.list(&ListParams::default()).await.is_ok());
    let (code, _, message) = refusal(ops.watch(&WatchParams::default(), "0").await.map(|_| ()));
    assert_eq!(code, 403);
    assert!(message.contains("cannot watch resource \"pods\" in API group \"\" in the namespace \"ops\""), "{message}");

    // Writes, named, in a group.
    api.forbid_verb("create", "Lease", None);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "shop");
    let (code, _, message) = refusal(leases.create(&PostParams::default(), &lease("leader", "a")).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        format!(
            "leases.coordination.k8s.io is forbidden: User \"{USER}\" cannot create resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"shop\""
        )
    );
    api.apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader", "namespace": "shop"}}));
    api.forbid_verb("delete", "Lease", Some("shop"));
    let (code, _, message) = refusal(leases.delete("leader", &DeleteParams::default()).await);
    assert_eq!(code, 403);
    assert!(message.starts_with("leases.coordination.k8s.io \"leader\" is forbidden: "), "{message}");
    assert!(
        message.ends_with(
            "cannot delete resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"shop\""
        )
    );
    assert!(api.object("Lease", "shop", "leader").is_some(), "still there");
    assert!(leases.get("leader").await.is_ok());

    // forbid(kind) is every verb, everywhere.
    api.forbid("Node");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let (code, _, message) = refusal(nodes.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert!(message.ends_with("cannot list resource \"nodes\" in API group \"\" at the cluster scope"), "{message}");
    assert_eq!(refusal(nodes.get("node-a").await).0, 403);
}

#[tokio::test]
async fn token_requests_are_issued_per_service_account_and_audience_under_rbac() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api = ApiServer::start().await;
    api.apply(json!({"kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "shop"}}));
    let accounts: Api<ServiceAccount> = Api::namespaced(api.client(), "shop");
    let request = |seconds: i64| TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["registry.example".into()],
            expiration_seconds: Some(seconds),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = accounts.create_token_request("builder", &PostParams::default(), &request(600)).await.expect("issued");
    let token = issued.status.expect("status").token;
    assert!(token.contains(".harness.registry.example.shop.builder."), "{token}");
    assert_eq!(api.issued_tokens(), std::slice::from_ref(&token));
    let again = accounts.create_token_request("builder", &PostParams::default(), &request(600)).await.expect("issued");
    assert_ne!(again.status.expect("status").token, token, "every token is new");

    let (code, _, message) =
        refusal(accounts.create_token_request("builder", &PostParams::default(), &request(599)).await);
    assert_eq!(code, 422);
    assert!(message.contains("may not specify a duration less than 10 minutes"), "{message}");
    let (code, _, _) = refusal(accounts.create_token_request("nobody", &PostParams::default(), &request(600)).await);
    assert_eq!(code, 404);

    api.forbid_verb("create", "TokenRequest", Some("shop"));
    let (code, _, message) =
        refusal(accounts.create_token_request("builder", &PostParams::default(), &request(600)).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        format!(
            "serviceaccounts \"builder\" is forbidden: User \"{USER}\" cannot create resource \"serviceaccounts/token\" \
             in API group \"\" in the namespace \"shop\""
        )
    );
    assert_eq!(api.issued_tokens().len(), 2, "refused requests issue nothing");
}

#[tokio::test]
async fn kube_system_is_there_from_the_start_with_a_uid_and_its_own_rbac() {
    let api = ApiServer::start().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(api.client());
    let kube_system = namespaces.get("kube-system").await.expect("every cluster has kube-system");
    let uid = kube_system.metadata.uid.expect("every namespace has a uid");
    assert!(!uid.is_empty());
    assert_eq!(api.kube_system_uid(), uid);
    let listed = namespaces.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.iter().filter_map(|n| n.metadata.uid.as_deref()).collect::<Vec<_>>(), [uid.as_str()]);
    api.forbid_verb("get", "Namespace", None);
    let (code, _, message) = refusal(namespaces.get("kube-system").await);
    assert_eq!(code, 403);
    assert!(message.starts_with("namespaces \"kube-system\" is forbidden: User"), "{message}");
    assert!(namespaces.list(&ListParams::default()).await.is_ok(), "get refused, list still granted");
}
