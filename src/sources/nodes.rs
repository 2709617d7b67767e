//! The platforms of the cluster's nodes: what an image index must cover to be pulled on any of
//! them (`platform_missing` otherwise).

use std::collections::BTreeSet;

use kube::api::Api;

use super::cluster::{ApiFailure, DEFAULT_PAGE_SIZE, list_each};
use crate::error::Warning;
use crate::platform::Platform;

/// The os/arch of every node (labels `kubernetes.io/os`, `kubernetes.io/arch`, else the node's
/// reported ones).
pub async fn list_node_platforms(client: &kube::Client) -> Result<Vec<Platform>, kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let mut platforms = BTreeSet::new();
    list_each(&api, DEFAULT_PAGE_SIZE, |node| {
        let labels = node.metadata.labels.unwrap_or_default();
        let info = node.status.and_then(|s| s.node_info);
        let os = labels.get("kubernetes.io/os").cloned().or_else(|| info.as_ref().map(|i| i.operating_system.clone()));
        let arch = labels.get("kubernetes.io/arch").cloned().or_else(|| info.as_ref().map(|i| i.architecture.clone()));
        if let (Some(os), Some(arch)) = (os, arch) {
            platforms.insert(Platform::new(&os, &arch, None));
        }
    })
    .await?;
    Ok(platforms.into_iter().collect())
}

/// The platforms indexes must cover: those given (`--platform`), else the nodes'. When the
/// nodes cannot be read, none (indexes are then not checked) and the warning saying so.
pub async fn required_platforms(given: Option<&[Platform]>, client: &kube::Client) -> (Vec<Platform>, Option<Warning>) {
    if let Some(given) = given {
        return (given.to_vec(), None);
    }
    match list_node_platforms(client).await {
        Ok(found) => (found, None),
        Err(e) => {
            let cause = ApiFailure::of(&e);
            let message = format!("cannot list nodes: {cause}; indexes are not checked for the nodes' platforms");
            (Vec::new(), Some(Warning::new(cause.warning_kind(), message)))
        }
    }
}
