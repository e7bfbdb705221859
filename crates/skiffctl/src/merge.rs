//! The three-way merge behind `apply` on an existing object, as kubectl's
//! client-side apply does it: the manifest's fields replace the live ones,
//! fields the previous apply set and the manifest no longer has are
//! removed, and everything else the live object holds (fields set by
//! controllers, the apiserver's defaults, status) is kept. Maps merge key
//! by key. Lists of objects that carry an identity (`name`, `mountPath`,
//! `containerPort`, `port`: the merge keys of Kubernetes' strategic merge
//! for containers, volumes, env, ports and mounts) merge item by item, in
//! the manifest's order, so that defaults inside a container survive; any
//! other list is replaced whole.

use serde_json::{Map, Value};

/// Where the manifest an object was last applied from is kept, as kubectl keeps it.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The object to write: `live` changed as `desired` asks, given the manifest
/// `last` applied before (if any). A `null` in `desired` means "not set".
pub fn three_way(live: &Value, last: Option<&Value>, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            let last = last.and_then(Value::as_object);
            let mut out: Map<String, Value> = live.clone();
            for (key, was) in last.into_iter().flatten() {
                let gone = desired.get(key).is_none_or(Value::is_null);
                if gone && !was.is_null() {
                    out.remove(key);
                }
            }
            for (key, want) in desired.iter().filter(|(_, v)| !v.is_null()) {
                let merged = three_way(live.get(key).unwrap_or(&Value::Null), last.and_then(|l| l.get(key)), want);
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(live), Value::Array(desired)) => match merge_key(desired) {
            Some(key) => {
                let last = last.and_then(Value::as_array);
                let find = |items: &'_ [Value], id: &Value| items.iter().find(|i| i.get(key) == Some(id)).cloned();
                let merged = desired.iter().map(|want| {
                    let id = &want[key];
                    let was = last.and_then(|l| find(l, id));
                    three_way(&find(live, id).unwrap_or(Value::Null), was.as_ref(), want)
                });
                Value::Array(merged.collect())
            }
            None => Value::Array(desired.clone()),
        },
        _ => desired.clone(),
    }
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: changed
/// and new fields, `null` for the ones `to` lacks, maps diffed key by key,
/// anything else (lists included) replaced whole.
pub fn patch_between(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for key in from.keys().filter(|k| !to.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, want) in to {
                match from.get(key) {
                    Some(was) if was == want => {}
                    Some(was @ Value::Object(_)) if want.is_object() => {
                        patch.insert(key.clone(), patch_between(was, want));
                    }
                    _ => {
                        patch.insert(key.clone(), want.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// The field that identifies each item of `items`, if every item is an
/// object with a distinct scalar value for it.
fn merge_key(items: &[Value]) -> Option<&'static str> {
    const KEYS: [&str; 4] = ["name", "mountPath", "containerPort", "port"];
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    KEYS.into_iter().find(|key| {
        let ids: Vec<&Value> = items.iter().filter_map(|i| i.get(*key)).collect();
        let scalar = ids.iter().all(|v| v.is_string() || v.is_number());
        let distinct = ids.iter().enumerate().all(|(n, id)| !ids[..n].contains(id));
        ids.len() == items.len() && scalar && distinct
    })
}

/// The manifest recorded on `obj` by the last apply, if it is there and readable.
pub fn last_applied(obj: &Value) -> Option<Value> {
    let text = obj.pointer("/metadata/annotations")?.get(LAST_APPLIED)?.as_str()?;
    serde_json::from_str(text).ok()
}

/// Records `manifest` on `obj` as the last applied one.
pub fn record_last_applied(obj: &mut Value, manifest: &Value) {
    let mut recorded = manifest.clone();
    if let Some(annotations) = recorded.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        annotations.remove(LAST_APPLIED);
    }
    let text = format!("{}\n", serde_json::to_string(&recorded).expect("a JSON value always serializes"));
    let meta = skiff_api::meta::metadata_mut(obj);
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    annotations.as_object_mut().expect("just made an object").insert(LAST_APPLIED.to_string(), Value::String(text));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patch_between_turns_one_object_into_the_other() {
        let from = json!({"metadata": {"labels": {"app": "web", "extra": "x"}},
                          "spec": {"containers": [{"name": "web", "image": "v2"}], "dnsPolicy": "ClusterFirst"}});
        let to = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "1"}},
                        "spec": {"containers": [{"name": "web", "image": "v1"}], "dnsPolicy": "ClusterFirst"}});
        let patch = patch_between(&from, &to);
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {"extra": null}, "annotations": {"a": "1"}},
                   "spec": {"containers": [{"name": "web", "image": "v1"}]}})
        );
        let mut patched = from.clone();
        json_merge(&mut patched, &patch);
        assert_eq!(patched, to);
        assert_eq!(patch_between(&to, &to), json!({}));
    }

    /// RFC 7386, to check patches against.
    fn json_merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    #[test]
    fn keeps_what_others_set_and_replaces_what_the_manifest_sets() {
        let live = json!({
            "metadata": {"name": "web", "uid": "u1", "resourceVersion": "7", "labels": {"app": "web", "added-by": "ctl"}},
            "spec": {"replicas": 2, "clusterIP": "10.96.0.3", "ports": [{"port": 80}, {"port": 81}]},
            "status": {"ready": true}
        });
        let desired = json!({
            "metadata": {"name": "web", "labels": {"app": "web2"}},
            "spec": {"replicas": 3, "ports": [{"port": 90}]}
        });
        let merged = three_way(&live, None, &desired);
        assert_eq!(
            merged,
            json!({
                "metadata": {"name": "web", "uid": "u1", "resourceVersion": "7", "labels": {"app": "web2", "added-by": "ctl"}},
                "spec": {"replicas": 3, "clusterIP": "10.96.0.3", "ports": [{"port": 90}]},
                "status": {"ready": true}
            })
        );
    }

    #[test]
    fn merges_lists_of_named_items_item_by_item() {
        let live = json!({"containers": [
            {"name": "side", "image": "s:1", "imagePullPolicy": "IfNotPresent"},
            {"name": "web", "image": "w:1", "imagePullPolicy": "Always", "ports": [{"containerPort": 80, "protocol": "TCP"}]}
        ]});
        let last =
            json!({"containers": [{"name": "web", "image": "w:1", "args": ["-v"]}, {"name": "side", "image": "s:1"}]});
        let desired = json!({"containers": [
            {"name": "web", "image": "w:2", "ports": [{"containerPort": 80}, {"containerPort": 81}]},
            {"name": "new", "image": "n:1"}
        ]});
        assert_eq!(
            three_way(&live, Some(&last), &desired),
            json!({"containers": [
                {"name": "web", "image": "w:2", "imagePullPolicy": "Always",
                 "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}]},
                {"name": "new", "image": "n:1"}
            ]})
        );
    }

    #[test]
    fn replaces_lists_without_an_identity() {
        let live = json!({"tolerations": [{"key": "a", "effect": "NoSchedule"}], "args": ["x"]});
        let desired = json!({"tolerations": [{"key": "b"}], "args": ["y", "z"]});
        assert_eq!(three_way(&live, None, &desired), desired);
        // Duplicate names are no identity either.
        let desired = json!({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]});
        let live = json!({"env": [{"name": "A", "value": "0", "extra": true}]});
        assert_eq!(three_way(&live, None, &desired), desired);
    }

    #[test]
    fn removes_fields_dropped_since_the_last_apply() {
        let last = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}, "spec": {"paused": true}});
        let live = json!({"metadata": {"labels": {"app": "web", "tier": "fe", "other": "x"}}, "spec": {"paused": true, "replicas": 1}});
        let desired = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"paused": null}});
        assert_eq!(
            three_way(&live, Some(&last), &desired),
            json!({"metadata": {"labels": {"app": "web", "other": "x"}}, "spec": {"replicas": 1}})
        );
    }

    #[test]
    fn an_unchanged_manifest_merges_to_the_live_object() {
        let desired = json!({"metadata": {"name": "cfg", "creationTimestamp": null}, "data": {"a": "1"}});
        let live =
            json!({"metadata": {"name": "cfg", "creationTimestamp": "2024-01-01T00:00:00Z"}, "data": {"a": "1"}});
        assert_eq!(three_way(&live, Some(&desired), &desired), live);
    }

    #[test]
    fn records_and_reads_back_the_last_applied_manifest() {
        let manifest = json!({"kind": "ConfigMap", "metadata": {"name": "cfg", "annotations": {"note": "x"}}});
        let mut obj = manifest.clone();
        record_last_applied(&mut obj, &manifest);
        assert_eq!(obj["metadata"]["annotations"]["note"], json!("x"));
        assert_eq!(last_applied(&obj), Some(manifest.clone()));
        // Re-recording from an object that carries the annotation doesn't nest it.
        let mut again = obj.clone();
        record_last_applied(&mut again, &obj);
        assert_eq!(last_applied(&again), Some(manifest));
    }
}
