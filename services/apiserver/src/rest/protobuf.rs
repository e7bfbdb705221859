//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send whatever the server prefers: `kubectl
//! create deployment|configmap|secret|job…`, `run`, `expose`, `auth can-i`,
//! `drain`, `create token`. They are decoded here into the JSON the rest of
//! the apiserver reads (answers go back as JSON, which those clients
//! accept).
//!
//! The wire format: the magic `k8s\0`, then a `runtime.Unknown` (field 1
//! its TypeMeta — apiVersion, kind — and field 2 the object's own
//! encoding). The objects' messages come from Kubernetes' definitions
//! (`proto/k8s.io`, compiled by build.rs) and are read dynamically; the
//! few types whose JSON form is not their message's (IntOrString,
//! Quantity, Time, MicroTime, Duration, RawExtension, FieldsV1) are turned
//! into what the JSON API has.

use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value as Field};
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let set = include_bytes!(concat!(env!("OUT_DIR"), "/k8s.descriptor.bin"));
        DescriptorPool::decode(set.as_slice()).expect("build.rs compiled a valid descriptor set")
    })
}

/// The body as JSON: the object it carries, with its apiVersion and kind.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(MAGIC).ok_or("the body lacks the k8s protobuf magic")?;
    let unknown = message("k8s.io.apimachinery.pkg.runtime.Unknown", envelope)?;
    let api_version = unknown.pointer("/typeMeta/apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = unknown.pointer("/typeMeta/kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let raw = unknown.get("raw").and_then(Value::as_str).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD.decode(raw).map_err(|e| e.to_string())?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    // `rbac.authorization.k8s.io` is package `k8s.io.api.rbac`, the core group `core`.
    let package = match group.split('.').next() {
        Some("") | None => "core",
        Some(first) => first,
    };
    let mut object = message(&format!("k8s.io.api.{package}.{version}.{kind}"), &raw)?;
    let map = object.as_object_mut().ok_or("the object is not a message")?;
    map.insert("apiVersion".into(), api_version.into());
    map.insert("kind".into(), kind.into());
    Ok(object)
}

fn message(name: &str, bytes: &[u8]) -> Result<Value, String> {
    let descriptor = pool().get_message_by_name(name).ok_or_else(|| format!("{name} is not a served type"))?;
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| format!("decoding {name}: {e}"))?;
    Ok(json_of(&message))
}

/// A message as the JSON API writes it.
fn json_of(message: &DynamicMessage) -> Value {
    let field = |name: &str| message.get_field_by_name(name).map(|v| json_field(&v));
    match message.descriptor().full_name() {
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => match message.get_field_by_name("type").as_deref() {
            Some(Field::I64(1)) => field("strVal").unwrap_or_default(),
            _ => field("intVal").unwrap_or_default(),
        },
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => field("string").unwrap_or_default(),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => field("duration").unwrap_or_default(),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let seconds = field("seconds").and_then(|s| s.as_i64()).unwrap_or(0);
            let nanos = field("nanos").and_then(|n| n.as_i64()).unwrap_or(0);
            // Go writes a zero time it holds by value; its JSON says null.
            if seconds == 0 && nanos == 0 {
                return Value::Null;
            }
            let at = chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0)).unwrap_or_default();
            let micro = message.descriptor().name() == "MicroTime";
            let format = if micro { chrono::SecondsFormat::Micros } else { chrono::SecondsFormat::Secs };
            at.to_rfc3339_opts(format, true).into()
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let raw = message.get_field_by_name(if message.descriptor().name() == "FieldsV1" { "Raw" } else { "raw" });
            match raw.as_deref() {
                Some(Field::Bytes(bytes)) => serde_json::from_slice(bytes).unwrap_or_default(),
                _ => Value::Null,
            }
        }
        _ => {
            let mut fields = Map::new();
            for (field, value) in message.fields() {
                match json_field(value) {
                    // Go writes every string field it holds by value, empty
                    // or not; its JSON leaves out the empty ones.
                    Value::Null => {}
                    Value::String(s) if s.is_empty() => {}
                    Value::Object(inner) if inline(&field) => fields.extend(inner),
                    json => {
                        fields.insert(field.name().to_string(), json);
                    }
                }
            }
            Value::Object(fields)
        }
    }
}

/// Fields whose type Go embeds (`json:",inline"`): in protobuf a field of
/// their own, in JSON their fields are the parent's.
fn inline(field: &prost_reflect::FieldDescriptor) -> bool {
    let prost_reflect::Kind::Message(message) = field.kind() else { return false };
    matches!(
        message.full_name(),
        "k8s.io.api.networking.v1.IngressRuleValue"
            | "k8s.io.api.core.v1.VolumeSource"
            | "k8s.io.api.core.v1.PersistentVolumeSource"
            | "k8s.io.api.core.v1.ProbeHandler"
            | "k8s.io.api.core.v1.EphemeralContainerCommon"
    )
}

fn json_field(value: &Field) -> Value {
    match value {
        Field::Bool(b) => (*b).into(),
        Field::I32(n) => (*n).into(),
        Field::I64(n) => (*n).into(),
        Field::U32(n) => (*n).into(),
        Field::U64(n) => (*n).into(),
        Field::F32(n) => f64::from(*n).into(),
        Field::F64(n) => (*n).into(),
        Field::String(s) => s.as_str().into(),
        Field::Bytes(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes).into(),
        Field::EnumNumber(n) => (*n).into(),
        Field::Message(message) => json_of(message),
        Field::List(items) => items.iter().map(json_field).filter(|v| !v.is_null()).collect(),
        Field::Map(entries) => {
            let key = |k: &MapKey| match k {
                MapKey::String(s) => s.clone(),
                MapKey::Bool(b) => b.to_string(),
                MapKey::I32(n) => n.to_string(),
                MapKey::I64(n) => n.to_string(),
                MapKey::U32(n) => n.to_string(),
                MapKey::U64(n) => n.to_string(),
            };
            Value::Object(entries.iter().map(|(k, v)| (key(k), json_field(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// `message` encoded as kubectl sends it.
    fn envelope(api_version: &str, kind: &str, object: &DynamicMessage) -> Vec<u8> {
        let mut unknown =
            DynamicMessage::new(pool().get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown").unwrap());
        let mut type_meta =
            DynamicMessage::new(pool().get_message_by_name("k8s.io.apimachinery.pkg.runtime.TypeMeta").unwrap());
        type_meta.set_field_by_name("apiVersion", Field::String(api_version.into()));
        type_meta.set_field_by_name("kind", Field::String(kind.into()));
        unknown.set_field_by_name("typeMeta", Field::Message(type_meta));
        unknown.set_field_by_name("raw", Field::Bytes(object.encode_to_vec().into()));
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    fn from_json(name: &str, json: &str) -> DynamicMessage {
        let descriptor = pool().get_message_by_name(name).unwrap();
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(descriptor, &mut de).unwrap()
    }

    #[test]
    fn a_deployment_decodes_to_its_json() {
        let deployment = from_json(
            "k8s.io.api.apps.v1.Deployment",
            r#"{"metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                         "strategy": {"rollingUpdate": {"maxSurge": {"type": 1, "strVal": "25%"}, "maxUnavailable": {"intVal": 1}}},
                         "template": {"spec": {"containers": [{"name": "web", "image": "nginx",
                             "resources": {"limits": {"cpu": {"string": "500m"}}}}]}}}}"#,
        );
        let json = decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
        assert_eq!((json["apiVersion"].as_str(), json["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
        assert_eq!(json["metadata"]["labels"]["app"], "web");
        assert_eq!(json["spec"]["replicas"], 0, "a field set to zero is kept: {json}");
        assert_eq!(json["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(json["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 1);
        assert_eq!(json["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m");
    }

    #[test]
    fn core_kinds_and_reviews_decode() {
        let secret = from_json("k8s.io.api.core.v1.Secret", r#"{"metadata": {"name": "s"}, "data": {"k": "aGk="}}"#);
        let json = decode(&envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(json["data"]["k"], "aGk=", "bytes are base64, as in JSON");
        let review = from_json(
            "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
            r#"{"spec": {"resourceAttributes": {"verb": "create", "resource": "deployments", "group": "apps"}}}"#,
        );
        let json = decode(&envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", &review)).unwrap();
        assert_eq!(json["spec"]["resourceAttributes"]["verb"], "create");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]
        #[test]
        fn any_body_is_decoded_or_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&body);
            let _ = decode(&[MAGIC, &body].concat());
        }
    }

    #[test]
    fn garbage_and_unserved_types_are_errors() {
        assert!(decode(b"nope").is_err());
        let node = from_json("k8s.io.api.core.v1.Node", r#"{"metadata": {"name": "n"}}"#);
        assert!(decode(&envelope("v9", "Node", &node)).is_err(), "no such package");
    }
}
