//! Attributes of the series, spans and logs, named as the OpenTelemetry semantic conventions
//! name them (docs/telemetry.md).

use opentelemetry::{Array, KeyValue, StringValue, Value};

use crate::image::{ImageRef, host_and_port};
use crate::inventory::keys::{ImageUse, Series};
use crate::inventory::{WorkloadKind, WorkloadRef};
use crate::name::Name;

/// `k8s.<kind>.name`, as the semantic conventions name each workload kind.
pub fn workload_name_attribute(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "k8s.deployment.name",
        WorkloadKind::StatefulSet => "k8s.statefulset.name",
        WorkloadKind::DaemonSet => "k8s.daemonset.name",
        WorkloadKind::ReplicaSet => "k8s.replicaset.name",
        WorkloadKind::ReplicationController => "k8s.replicationcontroller.name",
        WorkloadKind::Job => "k8s.job.name",
        WorkloadKind::CronJob => "k8s.cronjob.name",
        WorkloadKind::Pod => "k8s.pod.name",
        WorkloadKind::PodTemplate => "k8s.podtemplate.name",
    }
}

/// `server.address` (the host alone) and `server.port` (when the name carries one) of a
/// registry name.
pub fn server_attributes(registry: &str) -> Vec<KeyValue> {
    let (address, port) = host_and_port(registry);
    let mut attributes = vec![KeyValue::new("server.address", address.to_string())];
    if let Some(port) = port {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    attributes
}

/// `container.image.name`, `container.image.tags`, `server.address`, `server.port` of a reference.
pub fn image_attributes(image: &ImageRef) -> Vec<KeyValue> {
    let mut attributes = vec![KeyValue::new("container.image.name", image.name())];
    attributes.extend(server_attributes(image.registry()));
    if let Some(tag) = image.tag() {
        let tags = Array::String(vec![StringValue::from(tag.to_string())]);
        attributes.push(KeyValue::new("container.image.tags", Value::Array(tags)));
    }
    attributes
}

/// On a series whose image is on a deprecated registry (`config::deprecated`), `true`; absent
/// otherwise, so the other series pay nothing for it.
pub const DEPRECATED_REGISTRY_ATTRIBUTE: &str = "pullcheck.registry.deprecated";

/// The attributes of one container's series: its workload, container and image (the reference
/// as written when it does not parse), and whether the image's registry is deprecated.
pub fn use_attributes(image_use: &ImageUse) -> Vec<KeyValue> {
    container_attributes(
        &image_use.user.workload,
        &image_use.user.container,
        image_use.canonical().ok_or(&image_use.written),
        // A moved repository's image is not deprecated while it can be pulled, nor known
        // absent from a manifest alone.
        image_use.replacement.as_ref().is_some_and(|r| !r.when_absent),
    )
}

/// The attributes of a series as `run` keeps it: the same as its use's.
pub fn series_attributes(series: &Series) -> Vec<KeyValue> {
    let (container, spec) = (series.container(), series.spec());
    let image = container.key.as_ref().map(|k| &k.image).ok_or(&spec.image);
    container_attributes(series.workload(), &spec.name, image, container.deprecated())
}

/// `image`: the canonical reference, or the one written when it does not parse.
fn container_attributes(
    workload: &WorkloadRef,
    container: &Name,
    image: Result<&ImageRef, &Name>,
    deprecated: bool,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(10);
    attributes.extend([
        KeyValue::new("k8s.namespace.name", workload.namespace.to_otel()),
        KeyValue::new(workload_name_attribute(workload.kind), workload.name.to_otel()),
        KeyValue::new("pullcheck.workload.kind", workload.kind.as_str()),
        KeyValue::new("k8s.container.name", container.to_otel()),
    ]);
    match image {
        Ok(image) => attributes.extend(image_attributes(image)),
        Err(written) => attributes.push(KeyValue::new("container.image.name", written.to_otel())),
    }
    if deprecated {
        attributes.push(KeyValue::new(DEPRECATED_REGISTRY_ATTRIBUTE, true));
    }
    attributes
}

/// A deprecated image's series attributes and the reference of its replacement
/// (`pullcheck.replacement.image`), for `pullcheck.image.replacement.available`.
pub fn replacement_attributes(series: &Series) -> Vec<KeyValue> {
    let mut attributes = series_attributes(series);
    if let Some(replacement) = &series.container().replacement {
        attributes.push(KeyValue::new("pullcheck.replacement.image", replacement.to_string()));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::RegistryConfig;
    use crate::inventory::keys::resolve;
    use crate::inventory::selection::ImageFilter;
    use crate::telemetry::metrics::ContainerGauges;

    #[test]
    fn series_of_images_on_deprecated_registries_say_so() {
        let record = crate::inventory::fixtures::deployment(
            "ns",
            "web",
            &["k8s.gcr.io/pause:3.9", "registry.k8s.io/pause:3.9", "bitnami/redis:7.2.4"],
        );
        let deprecated = |config: &RegistryConfig| -> Vec<Option<Value>> {
            resolve([&record], |_| None, config, &ImageFilter::default(), &Arc::from(Vec::new()))
                .iter()
                .map(|u| {
                    use_attributes(u)
                        .into_iter()
                        .find(|kv| kv.key.as_str() == DEPRECATED_REGISTRY_ATTRIBUTE)
                        .map(|kv| kv.value)
                })
                .collect()
        };
        // A moved repository (Bitnami's) is not deprecated: its image may well be served.
        assert_eq!(deprecated(&RegistryConfig::default()), [Some(Value::Bool(true)), None, None]);
        let removed =
            RegistryConfig::parse("deprecatedRegistries: {k8s.gcr.io: null}", "r.yaml", std::path::Path::new("."))
                .expect("valid");
        assert_eq!(deprecated(&removed), [None, None, None], "a config removing the entry drops the attribute");
    }

    #[test]
    fn a_series_kept_by_run_has_its_uses_attributes() {
        use crate::inventory::keys::WorkloadSeries;
        let record = crate::inventory::fixtures::deployment(
            "ns",
            "web",
            &["k8s.gcr.io/pause:3.9", "Not An Image", "bitnami/redis:7.2.4"],
        );
        let uses =
            resolve([&record], |_| None, &RegistryConfig::default(), &ImageFilter::default(), &Arc::from(Vec::new()));
        let workload = Arc::new(WorkloadSeries::new(Arc::new(record), &uses, |u| {
            (u.key.as_ref().ok().cloned(), u.replacement.as_ref().map(|r| r.key.clone()))
        }));
        for (index, image_use) in uses.iter().enumerate() {
            let series = Series::new(workload.clone(), index).expect("in range");
            assert_eq!(series_attributes(&series), use_attributes(image_use), "{image_use:?}");
            // The gauges hold the series flat, and give back the same one.
            let gauges = ContainerGauges::new(series, None, Some(true), None).expect("an index within u32");
            assert_eq!(gauges.series().map(|s| series_attributes(&s)), Some(use_attributes(image_use)));
        }
        assert!(Series::new(workload, 3).is_none(), "past the containers: no series, so no gauges");
        assert_eq!(std::mem::size_of::<ContainerGauges>(), 16);
    }

    #[test]
    fn host_and_port_are_separate_attributes() {
        let image = ImageRef::parse("127.0.0.1:5443/team/app:v1").expect("valid");
        let attributes = image_attributes(&image);
        let get = |key: &str| attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone());
        assert_eq!(get("server.address"), Some(Value::from("127.0.0.1")));
        assert_eq!(get("server.port"), Some(Value::I64(5443)));
        assert_eq!(get("container.image.name"), Some(Value::from("127.0.0.1:5443/team/app")));
        let hub = image_attributes(&ImageRef::parse("nginx").expect("valid"));
        assert!(hub.iter().all(|kv| kv.key.as_str() != "server.port"), "no port named, none exported");
    }
}
