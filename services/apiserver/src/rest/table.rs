//! Server-side printing: objects as a `meta.k8s.io/v1` Table, what `kubectl
//! get` asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
//! The columns are `skiff_api::columns`, the ones `skiffctl get` prints:
//! those of plain output at priority 0, the `-o wide` ones at priority 1.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skiff_api::{columns, KindInfo};

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// What each row carries of its object (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    /// A PartialObjectMetadata, the default: enough for `-A`'s namespace
    /// column and `--show-labels`.
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Include {
        match value {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn column_definitions(info: &KindInfo) -> Vec<Value> {
    let plain = columns::header(info.kind, false).len();
    let mut defs = Vec::new();
    let named = info.kind != "Event";
    if named {
        defs.push(column("Name", 0, "name"));
    }
    for (i, title) in columns::header(info.kind, true).iter().enumerate() {
        defs.push(column(title, if i < plain { 0 } else { 1 }, ""));
    }
    if !named {
        defs.push(column("Name", 1, "name"));
    }
    defs
}

fn column(name: &str, priority: u8, format: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": "", "priority": priority})
}

fn row(info: &KindInfo, object: Value, include: Include, now: DateTime<Utc>) -> Value {
    let name = skiff_api::meta::name(&object).to_string();
    let mut cells: Vec<Value> = Vec::new();
    if info.kind != "Event" {
        cells.push(name.clone().into());
    }
    cells.extend(columns::cells(info.kind, &object, true, now).into_iter().map(Value::from));
    if info.kind == "Event" {
        cells.push(name.into());
    }
    let mut row = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Object => row["object"] = object,
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_default(),
            })
        }
    }
    row
}

/// A Table of `objects` (each one JSON object of kind `info`).
pub fn table(
    info: &KindInfo,
    objects: Vec<Value>,
    resource_version: &str,
    continue_token: &str,
    include: Include,
) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = objects.into_iter().map(|o| row(info, o, include, now)).collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if !continue_token.is_empty() {
        metadata["continue"] = continue_token.into();
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(info),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_row_has_the_columns_kubectl_shows() {
        let info = KindInfo::by_kind("Pod").unwrap();
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5",
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        let t = table(info, vec![pod], "42", "", Include::Metadata);
        let names: Vec<_> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
        assert_eq!(names, ["Name", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]);
        assert_eq!(t["columnDefinitions"][5]["priority"], 1, "IP is a wide column");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(
            (cells[0].as_str(), cells[1].as_str(), cells[2].as_str()),
            (Some("web"), Some("1/1"), Some("Running"))
        );
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");
        assert_eq!(t["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn table_accept_headers() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }
}
