//! A workload object as pullcheck reads it: the fields it uses — names, owners, replicas and
//! suspension, the pod template's containers, pull secrets, service account and node selection
//! — decoded straight from the bytes. `managedFields`, `status` and the rest of the spec are
//! skipped while parsing, never built. Manifests on disk decode into the same type.
//!
//! Fields whose shape a manifest may get wrong (`containers: {}`) are [`Loose`]: a wrong shape
//! is remembered, not an error of the whole document, so the reducer can say which field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::ApiResource;
use kube::core::DynamicResourceScope;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// A workload object, slim. A `kube::Resource` of any workload kind (the kind is the
/// `ApiResource` it was asked for), so kube's lists and watchers decode into it directly.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimObject {
    #[serde(default, deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<SlimSpec>,
    /// PodTemplates hold their pod template at the top.
    #[serde(default)]
    pub template: Option<SlimTemplate>,
    /// A Pod's: the digests its containers run. Other kinds' status decodes to nothing.
    #[serde(default)]
    pub status: Option<SlimStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimStatus {
    pub container_statuses: Option<Loose<Vec<Loose<SlimContainerStatus>>>>,
    pub init_container_statuses: Option<Loose<Vec<Loose<SlimContainerStatus>>>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimContainerStatus {
    pub name: Option<Loose<String>>,
    #[serde(rename = "imageID")]
    pub image_id: Option<Loose<String>>,
}

/// Any spec on the way to a pod spec: a workload's (`replicas`, `suspend`, `template`,
/// `jobTemplate`), a Job template's, or a pod spec itself (a Pod's `spec`, a template's).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimSpec {
    pub replicas: Option<Loose<i64>>,
    pub suspend: Option<Loose<bool>>,
    pub template: Option<SlimTemplate>,
    pub job_template: Option<SlimTemplate>,
    pub containers: Option<Loose<Vec<Loose<SlimContainer>>>>,
    pub init_containers: Option<Loose<Vec<Loose<SlimContainer>>>>,
    pub ephemeral_containers: Option<Loose<Vec<Loose<SlimContainer>>>>,
    pub image_pull_secrets: Option<Loose<Vec<Loose<SlimName>>>>,
    pub service_account_name: Option<Loose<String>>,
    pub service_account: Option<Loose<String>>,
    pub node_selector: Option<Loose<BTreeMap<String, Loose<String>>>>,
    pub affinity: Option<Loose<SlimAffinity>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimTemplate {
    pub spec: Option<Box<SlimSpec>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimContainer {
    pub name: Option<Loose<String>>,
    pub image: Option<Loose<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimName {
    pub name: Option<Loose<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimAffinity {
    pub node_affinity: Option<Loose<SlimNodeAffinity>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimNodeAffinity {
    pub required_during_scheduling_ignored_during_execution: Option<Loose<SlimNodeSelector>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimNodeSelector {
    pub node_selector_terms: Option<Loose<Vec<Loose<SlimTerm>>>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimTerm {
    pub match_expressions: Option<Loose<Vec<Loose<SlimExpression>>>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimExpression {
    pub key: Option<Loose<String>>,
    pub operator: Option<Loose<String>>,
    pub values: Option<Loose<Vec<Loose<String>>>>,
}

/// The metadata pullcheck reads; everything else of `metadata` (`managedFields`, annotations,
/// labels of workloads) is skipped.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    uid: Option<String>,
    owner_references: Option<Vec<SlimOwner>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimOwner {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    controller: Option<bool>,
}

fn slim_metadata<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    let Some(meta) = Option::<SlimMeta>::deserialize(deserializer)? else { return Ok(ObjectMeta::default()) };
    let owner_references = meta.owner_references.map(|owners| {
        owners
            .into_iter()
            .map(|o| OwnerReference {
                api_version: o.api_version,
                kind: o.kind,
                name: o.name,
                uid: o.uid,
                controller: o.controller,
                block_owner_deletion: None,
            })
            .collect()
    });
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        uid: meta.uid,
        owner_references,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for SlimObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The JSON shape a field should have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    List,
    Mapping,
    String,
    Bool,
    Integer,
}

impl Shape {
    pub fn describe(self) -> &'static str {
        match self {
            Shape::List => "a list",
            Shape::Mapping => "a mapping",
            Shape::String => "a string",
            Shape::Bool => "true or false",
            Shape::Integer => "an integer",
        }
    }
}

/// Types a [`Loose`] field may hold, by their shape.
pub trait Shaped: DeserializeOwned {
    const SHAPE: Shape;
}

impl<T: DeserializeOwned> Shaped for Vec<T> {
    const SHAPE: Shape = Shape::List;
}
impl<T: DeserializeOwned> Shaped for BTreeMap<String, T> {
    const SHAPE: Shape = Shape::Mapping;
}
impl Shaped for String {
    const SHAPE: Shape = Shape::String;
}
impl Shaped for bool {
    const SHAPE: Shape = Shape::Bool;
}
impl Shaped for i64 {
    const SHAPE: Shape = Shape::Integer;
}
macro_rules! mapping_shaped {
    ($($t:ty),*) => { $(impl Shaped for $t { const SHAPE: Shape = Shape::Mapping; })* };
}
mapping_shaped!(
    SlimContainer,
    SlimName,
    SlimAffinity,
    SlimNodeAffinity,
    SlimNodeSelector,
    SlimTerm,
    SlimExpression,
    SlimContainerStatus
);

/// A field of the expected shape (`Some`), or of another one (`None`, its content skipped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loose<T>(pub Option<T>);

impl<T> Loose<T> {
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Shaped> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LooseVisitor(PhantomData))
    }
}

struct LooseVisitor<T>(PhantomData<T>);

impl<T: Shaped> LooseVisitor<T> {
    fn scalar<E: de::Error>(value: impl IntoDeserializer<'static, E>, shape: Shape) -> Result<Loose<T>, E> {
        if T::SHAPE != shape {
            return Ok(Loose(None));
        }
        T::deserialize(value.into_deserializer()).map(|v| Loose(Some(v)))
    }
}

impl<'de, T: Shaped> Visitor<'de> for LooseVisitor<T> {
    type Value = Loose<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::SHAPE.describe())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if T::SHAPE == Shape::List {
            return T::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(|v| Loose(Some(v)));
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if T::SHAPE == Shape::Mapping {
            return T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|v| Loose(Some(v)));
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose(None))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Self::scalar(v.to_string(), Shape::String)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Self::scalar(v, Shape::String)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Self::scalar(v, Shape::Bool)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::scalar(v, Shape::Integer)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match i64::try_from(v) {
            Ok(v) => Self::scalar(v, Shape::Integer),
            Err(_) => Ok(Loose(None)),
        }
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Loose(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_an_object_is_skipped_and_wrong_shapes_are_remembered() {
        let json = r#"{"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"web","namespace":"shop","resourceVersion":"7","labels":{"a":"b"},
                        "managedFields":[{"manager":"kubectl","fieldsV1":{"f:spec":{}}}],
                        "ownerReferences":[{"apiVersion":"x/v1","kind":"Thing","name":"t","uid":"u","controller":true}]},
            "spec":{"replicas":3,"strategy":{"type":"RollingUpdate"},
                    "template":{"metadata":{"labels":{"app":"web"}},
                                "spec":{"containers":[{"name":"app","image":"nginx","ports":[{"containerPort":80}]}, "junk"],
                                        "imagePullSecrets":{"name":"oops"},"nodeSelector":{"kubernetes.io/arch":"arm64"}}}},
            "status":{"replicas":3,"conditions":[{"type":"Available"}]}}"#;
        let object: SlimObject = serde_json::from_str(json).expect("decodes");
        assert_eq!(object.metadata.name.as_deref(), Some("web"));
        assert_eq!(object.metadata.resource_version.as_deref(), Some("7"));
        assert!(object.metadata.labels.is_none() && object.metadata.managed_fields.is_none(), "skipped");
        assert_eq!(object.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        let spec = object.spec.expect("spec");
        assert_eq!(spec.replicas.and_then(|r| r.0), Some(3));
        let pod = spec.template.and_then(|t| t.spec).expect("pod spec");
        let containers = pod.containers.and_then(|c| c.0).expect("a list");
        assert_eq!(containers.len(), 2);
        assert!(containers[1].0.is_none(), "a string where a container should be");
        assert_eq!(pod.image_pull_secrets.map(|s| s.0.is_none()), Some(true), "a mapping, not a list");
    }
}
