//! Failed pulls as kubelet reports them: Warning Events on Pods — reason `Failed` with
//! `Failed to pull image "<image>": …`, reason `BackOff` with `Back-off pulling image "<image>"`.
//! Each names an image that a node just could not pull: `run` probes it at once.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use tokio::sync::mpsc;

use super::cluster::{is_forbidden, place};
use super::coalesce::{self, Coalesced};

/// A pull a node failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullFailure {
    pub namespace: String,
    pub pod: String,
    pub reason: String,
    pub message: String,
    /// The image as the event names it (as written in the pod spec).
    pub image: String,
}

/// The longest message kept: kubelet's include the runtime's error, sometimes long.
const MAX_MESSAGE: usize = 512;

/// The image a kubelet pull-failure message names, by its reason.
pub fn image_in_message<'a>(reason: &str, message: &'a str) -> Option<&'a str> {
    let after = match reason {
        "Failed" => message.strip_prefix("Failed to pull image \"")?,
        "BackOff" => message.strip_prefix("Back-off pulling image \"")?,
        _ => return None,
    };
    after.split_once('"').map(|(image, _)| image).filter(|i| !i.is_empty())
}

/// The pull failure an Event reports, if it is one.
pub fn pull_failure(event: &Event) -> Option<PullFailure> {
    if event.type_.as_deref() != Some("Warning") || event.involved_object.kind.as_deref() != Some("Pod") {
        return None;
    }
    let reason = event.reason.as_deref()?;
    let message = event.message.as_deref()?;
    let image = image_in_message(reason, message)?;
    let namespace = event.involved_object.namespace.clone().or_else(|| event.metadata.namespace.clone())?;
    let mut kept = message.to_string();
    if let Some((cut, _)) = kept.char_indices().nth(MAX_MESSAGE) {
        kept.truncate(cut);
    }
    Some(PullFailure {
        namespace,
        pod: event.involved_object.name.clone().unwrap_or_default(),
        reason: reason.to_string(),
        message: kept,
        image: image.to_string(),
    })
}

/// Sends every pull failure reported from now on (events already there when the watch starts
/// are old news) until the receiver is gone. `namespace`: one namespace, or all. A 403 is said
/// once and the watch given up: everything else goes on.
pub async fn watch_pull_failures(client: kube::Client, namespace: Option<String>, tx: mpsc::Sender<PullFailure>) {
    let api: Api<Event> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    // Only warnings travel: the API server filters them.
    let config = watcher::Config::default().fields("type=Warning");
    let watch = watcher::watcher(api, config).default_backoff().boxed();
    let mut events = Coalesced::new(watch, coalesce::PAUSE);
    while let Some(event) = events.next().await {
        match event {
            Ok(WatchEvent::Init) => events.unsettle(),
            Ok(WatchEvent::InitDone) => events.settle(),
            Ok(WatchEvent::Apply(event)) => {
                if let Some(failure) = pull_failure(&event)
                    && tx.send(failure).await.is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) if is_forbidden(&e) => {
                let place = place(namespace.as_deref());
                tracing::warn!(
                    "cannot watch events {place}: forbidden by RBAC (list, watch events); failed pulls are not probed at once"
                );
                return;
            }
            Err(e) => tracing::debug!(error = %e, "event watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_messages_name_the_image() {
        assert_eq!(
            image_in_message(
                "Failed",
                r#"Failed to pull image "registry.example/app:v1": rpc error: code = NotFound desc = failed to pull and unpack image"#
            ),
            Some("registry.example/app:v1")
        );
        assert_eq!(image_in_message("BackOff", r#"Back-off pulling image "nginx:1.27""#), Some("nginx:1.27"));
        assert_eq!(image_in_message("Failed", "Error: ErrImagePull"), None, "no image named");
        assert_eq!(image_in_message("Killing", r#"Stopping container "app""#), None);
        assert_eq!(image_in_message("Failed", r#"Failed to pull image "": x"#), None);
    }

    #[test]
    fn only_warnings_on_pods_count() {
        let mut event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "shop"},
            "type": "Warning", "reason": "BackOff", "message": "Back-off pulling image \"nginx:1.27\""
        }))
        .expect("an event");
        let failure = pull_failure(&event).expect("a pull failure");
        assert_eq!(
            (failure.namespace.as_str(), failure.pod.as_str(), failure.image.as_str()),
            ("shop", "web-1", "nginx:1.27")
        );
        event.type_ = Some("Normal".into());
        assert!(pull_failure(&event).is_none());
    }
}
