//! Server-side apply (`application/apply-patch+yaml`, `kubectl apply
//! --server-side`): a manager sends the fields it wants set; they are merged
//! into the object (strategic merge, so lists merge by their keys), the
//! fields it set before and no longer sends are removed, and the object's
//! `metadata.managedFields` records, per manager, the fields it applied (as
//! Kubernetes' FieldsV1: `f:FIELD`, `k:{"KEY":VALUE}` for an element of a
//! list merged by key, `v:VALUE` for an element of a set, `.` for the
//! element itself).
//!
//! A field another applier owns with a different value is a conflict,
//! refused unless the apply forces it (then the field changes hands). Only
//! appliers own fields here: writes by update and patch are not tracked,
//! so they never conflict and never hold on to a field an applier drops.

use serde_json::{json, Map, Value};

use crate::patch::{list_merge, strategic_merge, ListMerge};
use crate::{meta, Error};

/// Who applies, and how.
pub struct Applier<'a> {
    pub manager: &'a str,
    /// Take over fields other appliers own instead of failing.
    pub force: bool,
    /// The config's apiVersion, recorded with its fields.
    pub api_version: &'a str,
    /// Now, as the API writes times.
    pub now: &'a str,
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] Error),
    /// Fields other appliers own with other values: (manager, field path).
    #[error("Apply failed with {} conflict(s): {}", .0.len(), describe(.0))]
    Conflicts(Vec<(String, String)>),
}

fn describe(conflicts: &[(String, String)]) -> String {
    conflicts.iter().map(|(manager, path)| format!("conflict with {manager:?}: {path}")).collect::<Vec<_>>().join("; ")
}

/// The object after `applier` applies `config` to `current` (None: the
/// object does not exist yet).
pub fn apply(current: Option<&Value>, config: &Value, applier: &Applier<'_>) -> Result<Value, ApplyError> {
    if !config.is_object() {
        return Err(Error::field("", "an applied configuration must be an object").into());
    }
    let owned = field_set(config, "", true);
    let mut entries = managed_fields(current);
    let others: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i]["manager"] != applier.manager && entries[i]["operation"] == "Apply")
        .collect();
    let mut conflicts = Vec::new();
    let mut object = current.cloned().unwrap_or_else(|| json!({}));
    for &i in &others {
        let theirs = &entries[i]["fieldsV1"];
        let mut shared = Vec::new();
        common_leaves(theirs, &owned, Some(&object), Some(config), "", &mut shared);
        if shared.is_empty() {
            continue;
        }
        if !applier.force {
            let manager = entries[i]["manager"].as_str().unwrap_or_default().to_string();
            conflicts.extend(shared.into_iter().map(|path| (manager.clone(), path)));
            continue;
        }
        // Forced: the fields change hands.
        let mut remaining = theirs.clone();
        subtract(&mut remaining, &owned);
        entries[i]["fieldsV1"] = remaining;
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let mine = entries.iter().position(|e| e["manager"] == applier.manager && e["operation"] == "Apply");
    if let Some(before) = mine.map(|i| entries[i]["fieldsV1"].clone()) {
        let mut held = json!({});
        for &i in &others {
            union(&mut held, &entries[i]["fieldsV1"]);
        }
        drop_released(&mut object, &before, &owned, &held, "");
    }
    let mut patch = config.clone();
    if let Some(metadata) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
    }
    strategic_merge(&mut object, &patch)?;
    let entry = json!({
        "manager": applier.manager,
        "operation": "Apply",
        "apiVersion": applier.api_version,
        "time": applier.now,
        "fieldsType": "FieldsV1",
        "fieldsV1": owned,
    });
    match mine {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|f| !f.is_empty()));
    meta::set(&mut object, "managedFields", Value::Array(entries));
    Ok(object)
}

fn managed_fields(object: Option<&Value>) -> Vec<Value> {
    object.and_then(|o| o.pointer("/metadata/managedFields")).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The FieldsV1 set of the fields `value` sets; `within` is the field that
/// holds `value` (the merge keys depend on it).
fn field_set(value: &Value, within: &str, root: bool) -> Value {
    let Value::Object(map) = value else { return json!({}) };
    let mut set = Map::new();
    for (field, child) in map {
        if root && matches!(field.as_str(), "apiVersion" | "kind" | "status") {
            continue;
        }
        if within == "metadata"
            && matches!(field.as_str(), "name" | "namespace" | "managedFields" | "resourceVersion" | "uid")
        {
            continue;
        }
        let entry = match child {
            Value::Object(_) => field_set(child, field, false),
            Value::Array(items) => list_set(items, within, field),
            _ => json!({}),
        };
        // Metadata naming the object only (name, namespace) sets no field.
        if root && field == "metadata" && entry.as_object().is_some_and(Map::is_empty) {
            continue;
        }
        set.insert(format!("f:{field}"), entry);
    }
    Value::Object(set)
}

fn list_set(items: &[Value], within: &str, field: &str) -> Value {
    let mut set = Map::new();
    match list_merge(within, field) {
        ListMerge::ByKey(key) => {
            for item in items {
                let Some(id) = item.get(key) else { continue };
                let mut element = field_set(item, field, false);
                element.as_object_mut().expect("a field set is a map").insert(".".into(), json!({}));
                set.insert(format!("k:{}", json!({key: id})), element);
            }
        }
        ListMerge::Set => {
            for item in items {
                set.insert(format!("v:{item}"), json!({}));
            }
        }
        // A list replaced whole is one field.
        ListMerge::Replace => {}
    }
    Value::Object(set)
}

/// The element of `list` a `k:` or `v:` entry names.
fn find(list: &[Value], entry: &str) -> Option<usize> {
    if let Some(key) = entry.strip_prefix("k:") {
        let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
        return list.iter().position(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    let wanted: Value = serde_json::from_str(entry.strip_prefix("v:")?).ok()?;
    list.iter().position(|item| *item == wanted)
}

/// What `entry` names inside `value`: a map's field or a list's element.
fn child<'a>(value: Option<&'a Value>, entry: &str) -> Option<&'a Value> {
    let value = value?;
    if let Some(field) = entry.strip_prefix("f:") {
        return value.get(field);
    }
    let list = value.as_array()?;
    find(list, entry).map(|i| &list[i])
}

fn child_mut<'a>(value: &'a mut Value, entry: &str) -> Option<&'a mut Value> {
    if let Some(field) = entry.strip_prefix("f:") {
        return value.get_mut(field);
    }
    let list = value.as_array_mut()?;
    let i = find(list, entry)?;
    list.get_mut(i)
}

fn remove_entry(value: &mut Value, entry: &str) {
    if let Some(field) = entry.strip_prefix("f:") {
        if let Some(map) = value.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(list) = value.as_array_mut() {
        if let Some(i) = find(list, entry) {
            list.remove(i);
        }
    }
}

/// An entry that owns a field whole (nothing under it but the element marker).
fn is_leaf(set: &Value) -> bool {
    set.as_object().is_none_or(|m| m.keys().all(|k| k == "."))
}

/// A path as messages print it: `.spec.replicas`, `.spec.containers[name="web"]`.
fn display(entry: &str) -> String {
    match (entry.strip_prefix("f:"), entry.strip_prefix("k:"), entry.strip_prefix("v:")) {
        (Some(field), _, _) => format!(".{field}"),
        (_, Some(key), _) => {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let pairs: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("[{}]", pairs.join(","))
        }
        (_, _, Some(value)) => format!("[{value}]"),
        _ => String::new(),
    }
}

/// Fields both sets own whose current value is not what `config` asks.
fn common_leaves(
    theirs: &Value,
    mine: &Value,
    current: Option<&Value>,
    config: Option<&Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let (Some(theirs), Some(mine)) = (theirs.as_object(), mine.as_object()) else { return };
    for (entry, their_sub) in theirs {
        let Some(my_sub) = mine.get(entry).filter(|_| entry != ".") else { continue };
        let here = format!("{path}{}", display(entry));
        let (current, config) = (child(current, entry), child(config, entry));
        if is_leaf(their_sub) || is_leaf(my_sub) {
            if current != config {
                out.push(here);
            }
        } else {
            common_leaves(their_sub, my_sub, current, config, &here, out);
        }
    }
}

/// Removes from `set` the fields `owned` names.
fn subtract(set: &mut Value, owned: &Value) {
    let (Some(set), Some(owned)) = (set.as_object_mut(), owned.as_object()) else { return };
    for (entry, sub) in owned {
        let Some(mine) = set.get_mut(entry) else { continue };
        if is_leaf(sub) || is_leaf(mine) {
            set.remove(entry);
        } else {
            subtract(mine, sub);
            if mine.as_object().is_some_and(|m| m.keys().all(|k| k == ".")) {
                set.remove(entry);
            }
        }
    }
}

fn union(into: &mut Value, add: &Value) {
    let (Some(into), Some(add)) = (into.as_object_mut(), add.as_object()) else { return };
    for (entry, sub) in add {
        match into.get_mut(entry) {
            Some(existing) => union(existing, sub),
            None => {
                into.insert(entry.clone(), sub.clone());
            }
        }
    }
}

/// Removes from `object` the fields `before` owned that neither `now` (this
/// apply) nor `held` (other appliers) owns: what the manager let go of.
fn drop_released(object: &mut Value, before: &Value, now: &Value, held: &Value, path: &str) {
    let Some(before) = before.as_object() else { return };
    let empty = json!({});
    for (entry, sub_before) in before {
        if entry == "." {
            continue;
        }
        let (sub_now, sub_held) = (now.get(entry), held.get(entry));
        let released = sub_now.is_none() && sub_held.is_none();
        let element = !entry.starts_with("f:");
        if released && (element || is_leaf(sub_before)) {
            remove_entry(object, entry);
            continue;
        }
        if is_leaf(sub_before) {
            continue;
        }
        let Some(inner) = child_mut(object, entry) else { continue };
        let here = format!("{path}{}", display(entry));
        drop_released(inner, sub_before, sub_now.unwrap_or(&empty), sub_held.unwrap_or(&empty), &here);
        if released && inner.as_object().is_some_and(Map::is_empty) {
            remove_entry(object, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applier(manager: &str, force: bool) -> Applier<'_> {
        Applier { manager, force, api_version: "apps/v1", now: "2026-01-01T00:00:00Z" }
    }

    fn config(replicas: i64, containers: &[&str]) -> Value {
        let containers: Vec<Value> = containers.iter().map(|n| json!({"name": n, "image": format!("{n}:1")})).collect();
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn the_first_apply_records_what_the_manager_set() {
        let applied = apply(None, &config(2, &["app"]), &applier("kubectl", false)).unwrap();
        assert_eq!(applied["spec"]["replicas"], 2);
        let fields = &applied["metadata"]["managedFields"][0];
        assert_eq!((fields["manager"].as_str(), fields["operation"].as_str()), (Some("kubectl"), Some("Apply")));
        let containers = &fields["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
        assert!(containers.get(r#"k:{"name":"app"}"#).is_some(), "{fields}");
        assert!(fields["fieldsV1"]["f:metadata"].get("f:name").is_none(), "the name is not a managed field");
    }

    #[test]
    fn what_a_manager_stops_sending_is_removed_and_the_rest_kept() {
        let mut current = apply(None, &config(2, &["app", "side"]), &applier("kubectl", false)).unwrap();
        // Set by someone else (a controller's update, defaults): not the applier's to remove.
        current["spec"]["revisionHistoryLimit"] = json!(10);
        let mut next = config(2, &["app"]);
        next["spec"].as_object_mut().unwrap().remove("replicas");
        let applied = apply(Some(&current), &next, &applier("kubectl", false)).unwrap();
        let names: Vec<_> =
            applied["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().map(|c| &c["name"]).collect();
        assert_eq!(names, [&json!("app")], "the dropped container is gone");
        assert!(applied["spec"].get("replicas").is_none(), "the dropped field is gone: {applied}");
        assert_eq!(applied["spec"]["revisionHistoryLimit"], 10, "a field nobody applied stays");
        assert_eq!(applied["metadata"]["managedFields"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn another_appliers_field_with_another_value_conflicts_unless_forced() {
        let current = apply(None, &config(2, &["app"]), &applier("kubectl", false)).unwrap();
        let scaler = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = apply(Some(&current), &scaler, &applier("autoscaler", false)).unwrap_err();
        assert!(err.to_string().contains(r#"conflict with "kubectl": .spec.replicas"#), "{err}");
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        apply(Some(&current), &same, &applier("autoscaler", false)).expect("the same value is shared, not a conflict");
        let forced = apply(Some(&current), &scaler, &applier("autoscaler", true)).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let entries = forced["metadata"]["managedFields"].as_array().unwrap();
        let kubectl = entries.iter().find(|e| e["manager"] == "kubectl").unwrap();
        assert!(kubectl["fieldsV1"]["f:spec"].get("f:replicas").is_none(), "replicas changed hands: {kubectl}");
        // kubectl no longer owns replicas, so dropping it from kubectl's config keeps the autoscaler's value.
        let mut next = config(2, &["app"]);
        next["spec"].as_object_mut().unwrap().remove("replicas");
        let applied = apply(Some(&forced), &next, &applier("kubectl", false)).unwrap();
        assert_eq!(applied["spec"]["replicas"], 5);
    }

    #[test]
    fn a_config_must_be_an_object() {
        assert!(apply(None, &json!(["x"]), &applier("kubectl", false)).is_err());
    }
}
