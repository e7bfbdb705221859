//! Strategic merge patch, as Kubernetes applies it to its built-in types
//! (`application/strategic-merge-patch+json`, what `kubectl apply`, `edit`,
//! `set image` and `label` send).
//!
//! It is a JSON merge patch (RFC 7386) but for two things:
//! - lists whose field the built-in types mark `patchStrategy: merge` merge
//!   element by element on their `patchMergeKey` (containers by name,
//!   container ports by containerPort…) instead of being replaced, and
//!   `finalizers`-style lists of strings merge as sets;
//! - directives: `$patch: replace|delete` on a map or list element,
//!   `$retainKeys`, `$setElementOrder/FIELD` and
//!   `$deleteFromPrimitiveList/FIELD`.
//!
//! The merge keys are those of the k8s.io/api types skiff serves, looked up
//! by field name and parent field name (the types reuse their field names
//! consistently, so a Pod's containers and a Deployment's template's
//! containers are the same entry).

use serde_json::{Map, Value};

use crate::Error;

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListMerge {
    /// Replaced whole, as in a JSON merge patch.
    Replace,
    /// Maps matched on this key.
    ByKey(&'static str),
    /// Scalars merged as a set.
    Set,
}

/// The patch strategy of list field `field` inside field `parent`.
pub(crate) fn list_merge(parent: &str, field: &str) -> ListMerge {
    use ListMerge::*;
    match (parent, field) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => ByKey("name"),
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => ByKey("containerPort"),
        ("containers" | "initContainers" | "ephemeralContainers", "env") => ByKey("name"),
        ("containers" | "initContainers" | "ephemeralContainers", "volumeMounts") => ByKey("mountPath"),
        ("containers" | "initContainers" | "ephemeralContainers", "volumeDevices") => ByKey("devicePath"),
        ("containers" | "initContainers" | "ephemeralContainers", "resizePolicy") => ByKey("resourceName"),
        // A Service's ports.
        ("spec", "ports") => ByKey("port"),
        (_, "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates") => ByKey("name"),
        (_, "hostAliases") => ByKey("ip"),
        (_, "topologySpreadConstraints") => ByKey("topologyKey"),
        (_, "ownerReferences") => ByKey("uid"),
        ("status", "conditions" | "addresses") => ByKey("type"),
        ("metadata", "finalizers") => Set,
        _ => Replace,
    }
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";

/// Applies strategic merge patch `patch` to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), Error> {
    let Value::Object(patch) = patch else {
        return Err(Error::field("", "a strategic merge patch must be a JSON object"));
    };
    merge_map(target, patch, "", "")
}

fn bad(path: &str, message: impl Into<String>) -> Error {
    Error::field(path, message)
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>, parent: &str, path: &str) -> Result<(), Error> {
    match patch.get(PATCH).map(|p| p.as_str()) {
        None => {}
        Some(Some("replace")) => {
            *target = Value::Object(without_directives(patch));
            return Ok(());
        }
        Some(Some("delete")) => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(bad(path, format!("unknown $patch directive {other:?}"))),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { unreachable!("made an object above") };
    for (key, value) in patch {
        if key == PATCH || key == RETAIN_KEYS || key.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM) {
            let Value::Array(gone) = value else {
                return Err(bad(&child(path, key), "must be a list"));
            };
            if let Some(Value::Array(list)) = map.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        let at = child(path, key);
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(inner) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                merge_map(slot, inner, key, &at)?;
                if slot.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                merge_list(slot, items, list_merge(parent, key), &at)?;
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (key, order) in patch.iter().filter_map(|(k, v)| Some((k.strip_prefix(SET_ORDER)?, v))) {
        let (Some(Value::Array(list)), Value::Array(order)) = (map.get_mut(key), order) else { continue };
        set_order(list, order, list_merge(parent, key));
    }
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Value::Array(keep) = retain else { return Err(bad(&child(path, RETAIN_KEYS), "must be a list")) };
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        map.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(target: &mut Value, items: &[Value], strategy: ListMerge, path: &str) -> Result<(), Error> {
    let replace_whole = items.iter().any(|i| i.get(PATCH).and_then(Value::as_str) == Some("replace"));
    if strategy == ListMerge::Replace || replace_whole || !target.is_array() {
        let kept = items.iter().filter(|i| i.get(PATCH).is_none()).map(strip_directives).collect();
        *target = Value::Array(kept);
        return Ok(());
    }
    let Value::Array(list) = target else { unreachable!("checked above") };
    match strategy {
        ListMerge::Set => {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
        ListMerge::ByKey(key) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{path}[{i}]");
                let Value::Object(patch) = item else { return Err(bad(&at, "must be an object")) };
                let Some(id) = patch.get(key) else {
                    return Err(bad(&at, format!("has no merge key {key:?}")));
                };
                let found = list.iter().position(|e| e.get(key) == Some(id));
                let delete = patch.get(PATCH).and_then(Value::as_str) == Some("delete");
                match (found, delete) {
                    (Some(pos), true) => {
                        list.remove(pos);
                    }
                    (None, true) => {}
                    (Some(pos), false) => merge_map(&mut list[pos], patch, path_field(path), &at)?,
                    (None, false) => {
                        let mut fresh = Value::Null;
                        merge_map(&mut fresh, patch, path_field(path), &at)?;
                        list.push(fresh);
                    }
                }
            }
        }
        ListMerge::Replace => unreachable!("handled above"),
    }
    Ok(())
}

/// The field a path ends in (`spec.template.spec.containers` → `containers`).
fn path_field(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// Orders `list` as `order` says (elements it does not name keep their
/// place after those it does), as `$setElementOrder` asks.
fn set_order(list: &mut [Value], order: &[Value], strategy: ListMerge) {
    let position = |v: &Value| {
        order.iter().position(|o| match strategy {
            ListMerge::ByKey(key) => o.get(key).is_some() && o.get(key) == v.get(key),
            _ => o == v,
        })
    };
    list.sort_by_key(|v| position(v).unwrap_or(usize::MAX));
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect()
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(without_directives(map)),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(target: Value, patch: Value) -> Value {
        let mut target = target;
        strategic_merge(&mut target, &patch).unwrap();
        target
    }

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "finalizers": ["a"]}, "spec": {"replicas": 2, "template": {"spec": {
            "containers": [
                {"name": "app", "image": "app:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "side:1"}
            ]
        }}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let out = patched(
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}}),
        );
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2, "{out}");
        assert_eq!(containers[0]["image"], "app:2");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80, "untouched fields stay");
        assert_eq!(containers[1]["image"], "side:1");
    }

    #[test]
    fn a_new_element_is_appended_and_delete_removes_one() {
        let out = patched(
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "side", "$patch": "delete"},
                {"name": "extra", "image": "extra:1"}
            ]}}}}),
        );
        let names: Vec<_> =
            out["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().map(|c| &c["name"]).collect();
        assert_eq!(names, [&json!("app"), &json!("extra")]);
    }

    #[test]
    fn env_merges_by_name_inside_a_container() {
        let out = patched(
            deployment(),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "env": [{"name": "B", "value": "2"}]}
            ]}}}}),
        );
        let env = &out["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env, &json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
    }

    #[test]
    fn lists_without_a_merge_key_are_replaced() {
        let target = json!({"spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}});
        let out = patched(target, json!({"spec": {"containers": [{"name": "a", "args": ["z"]}]}}));
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["z"]));
    }

    #[test]
    fn null_removes_and_finalizers_merge_as_a_set() {
        let out = patched(deployment(), json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"replicas": null}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert!(out["spec"].get("replicas").is_none());
        let out = patched(out, json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn patch_replace_and_retain_keys() {
        let out = patched(
            deployment(),
            json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "only"}]}}}}),
        );
        assert_eq!(out["spec"]["template"]["spec"], json!({"containers": [{"name": "only"}]}));
        let target = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = patched(target, json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let out = patched(
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                "containers": [{"name": "app", "image": "app:3"}]
            }}}}),
        );
        let names: Vec<_> =
            out["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().map(|c| &c["name"]).collect();
        assert_eq!(names, [&json!("side"), &json!("app")]);
    }

    #[test]
    fn service_ports_merge_by_port_and_bad_elements_name_their_field() {
        let target = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let out = patched(target.clone(), json!({"spec": {"ports": [{"port": 443, "name": "https"}]}}));
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        let mut t = target;
        let err = strategic_merge(&mut t, &json!({"spec": {"ports": [{"name": "x"}]}})).unwrap_err();
        assert!(err.to_string().contains("spec.ports[0]"), "{err}");
        assert!(strategic_merge(&mut t, &json!(["not", "an", "object"])).is_err());
    }
}
