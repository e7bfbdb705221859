//! Reading and writing `metadata` on objects held as JSON, which is how the
//! apiserver and generic clients handle every kind alike.

use serde_json::{Map, Value};

/// `metadata.<field>` as a string, or "" when absent.
pub fn str_field<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

pub fn name(obj: &Value) -> &str {
    str_field(obj, "name")
}

pub fn namespace(obj: &Value) -> &str {
    str_field(obj, "namespace")
}

pub fn resource_version(obj: &Value) -> &str {
    str_field(obj, "resourceVersion")
}

pub fn kind(obj: &Value) -> &str {
    obj.get("kind").and_then(Value::as_str).unwrap_or("")
}

pub fn api_version(obj: &Value) -> &str {
    obj.get("apiVersion").and_then(Value::as_str).unwrap_or("")
}

/// The `metadata` map, created if missing (or replaced if not an object).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let root = obj.as_object_mut().expect("just made an object");
    let meta = root.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("just made an object")
}

pub fn set(obj: &mut Value, field: &str, value: impl Into<Value>) {
    metadata_mut(obj).insert(field.to_string(), value.into());
}

pub fn remove(obj: &mut Value, field: &str) -> Option<Value> {
    metadata_mut(obj).remove(field)
}

/// Sets one annotation, making `metadata.annotations` if it is missing (or
/// not a map, which validation refuses anyway).
pub fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    let annotations = metadata_mut(obj).entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    if let Some(map) = annotations.as_object_mut() {
        map.insert(key.to_string(), Value::String(value.to_string()));
    }
}

pub fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_object)
}

pub fn finalizers(obj: &Value) -> Vec<&str> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The value at a dotted path (`spec.nodeName`), for field selectors.
pub fn lookup<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, seg| v.get(seg))
}

/// `namespace/name`, or `name` for cluster-scoped objects: the key clients
/// cache and queue objects under.
pub fn object_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_writes_metadata() {
        let mut obj = json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "ns"}});
        assert_eq!(name(&obj), "a");
        assert_eq!(namespace(&obj), "ns");
        assert_eq!(resource_version(&obj), "");
        set(&mut obj, "resourceVersion", "7");
        assert_eq!(resource_version(&obj), "7");
        let mut bare = json!("not an object");
        set(&mut bare, "name", "x");
        assert_eq!(name(&bare), "x");
    }

    #[test]
    fn set_annotation_keeps_the_others_and_makes_the_map() {
        let mut obj = json!({"metadata": {"annotations": {"a": "1"}}});
        set_annotation(&mut obj, "b", "2");
        assert_eq!(obj["metadata"]["annotations"], json!({"a": "1", "b": "2"}));
        let mut bare = json!({"metadata": {"annotations": null}});
        set_annotation(&mut bare, "b", "2");
        assert_eq!(bare["metadata"]["annotations"], json!({"b": "2"}));
    }

    #[test]
    fn looks_up_dotted_paths() {
        let obj = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert_eq!(lookup(&obj, "spec.nodeName"), Some(&json!("n1")));
        assert_eq!(lookup(&obj, "status.phase"), Some(&json!("Running")));
        assert_eq!(lookup(&obj, "spec.missing"), None);
    }
}
