//! The multi-line view `skiffctl describe` prints: what every object has
//! (name, labels, …), then what matters for its kind, then its Events.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use skiff_api::{meta, KindInfo};

use crate::merge::LAST_APPLIED;
use crate::table::{self, Table};

mod container;

use container::container;

/// What a description shows beside the object itself.
#[derive(Debug, Default)]
pub struct Related {
    /// The Events about the object.
    pub events: Vec<Value>,
    /// For an Ingress: the Endpoints of the Services it routes to.
    pub endpoints: Vec<Value>,
}

/// The whole description of `obj`, with what is related to it.
pub fn describe(info: &KindInfo, obj: &Value, related: &Related, now: DateTime<Utc>) -> String {
    let mut w = Writer::default();
    w.field(0, "Name", meta::name(obj));
    if info.namespaced {
        w.field(0, "Namespace", meta::namespace(obj));
    }
    w.list(0, "Labels", pairs(obj.pointer("/metadata/labels"), "=", &[]));
    w.list(0, "Annotations", pairs(obj.pointer("/metadata/annotations"), ": ", &[LAST_APPLIED]));
    w.field(0, "Created", &timestamp(str_at(obj, "/metadata/creationTimestamp"), now));
    if let Some(deleted) = str_at(obj, "/metadata/deletionTimestamp") {
        w.field(0, "Deleting Since", &timestamp(Some(deleted), now));
    }
    match info.kind {
        "Pod" => pod(&mut w, obj, now),
        "Deployment" => deployment(&mut w, obj, now),
        "Ingress" => ingress(&mut w, obj, &related.endpoints),
        "ResourceQuota" => resource_quota(&mut w, obj),
        "LimitRange" => limit_range(&mut w, obj),
        _ => generic(&mut w, info, obj),
    }
    events_section(&mut w, &related.events, now);
    w.render()
}

// === kinds ===

fn pod(w: &mut Writer, obj: &Value, now: DateTime<Utc>) {
    let node = match (str_at(obj, "/spec/nodeName"), str_at(obj, "/status/hostIP")) {
        (Some(node), Some(ip)) => format!("{node}/{ip}"),
        (Some(node), None) => node.to_string(),
        _ => "<none>".to_string(),
    };
    w.field(0, "Node", &node);
    if let Some(start) = str_at(obj, "/status/startTime") {
        w.field(0, "Start Time", &timestamp(Some(start), now));
    }
    w.field(0, "Status", &table::pod_status(obj));
    for (key, pointer) in [("Reason", "/status/reason"), ("Message", "/status/message")] {
        if let Some(v) = str_at(obj, pointer) {
            w.field(0, key, v);
        }
    }
    w.field(0, "IP", str_at(obj, "/status/podIP").unwrap_or("<none>"));
    if let Some(owner) = controller(obj) {
        w.field(0, "Controlled By", &owner);
    }
    let statuses = array(obj, "/status/containerStatuses");
    w.text(0, "Containers:");
    for c in array(obj, "/spec/containers") {
        let name = str_or(c.get("name"), "");
        let status = statuses.iter().find(|s| s.get("name").and_then(Value::as_str) == Some(name));
        container(w, 2, c, Some(status.unwrap_or(&Value::Null)), now);
    }
    // kubectl shows Type and Status only; a condition that explains itself
    // (PodScheduled=False: why no node fits) gets its reason and message too.
    let explained = array(obj, "/status/conditions").iter().any(|c| str_at(c, "/message").is_some());
    conditions(w, obj, if explained { &["Type", "Status", "Reason", "Message"] } else { &["Type", "Status"] });
}

fn deployment(w: &mut Writer, obj: &Value, now: DateTime<Utc>) {
    w.field(0, "Selector", &table::selector(obj.pointer("/spec/selector")));
    let count = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    w.field(
        0,
        "Replicas",
        &format!(
            "{desired} desired | {} updated | {} total | {} available | {} unavailable",
            count("/status/updatedReplicas"),
            count("/status/replicas"),
            count("/status/availableReplicas"),
            count("/status/unavailableReplicas"),
        ),
    );
    let strategy = str_at(obj, "/spec/strategy/type").unwrap_or("RollingUpdate");
    w.field(0, "StrategyType", strategy);
    w.field(0, "MinReadySeconds", &count("/spec/minReadySeconds").to_string());
    if strategy == "RollingUpdate" {
        let param = |p: &str| obj.pointer(p).map_or("25%".to_string(), scalar);
        w.field(
            0,
            "RollingUpdateStrategy",
            &format!(
                "{} max unavailable, {} max surge",
                param("/spec/strategy/rollingUpdate/maxUnavailable"),
                param("/spec/strategy/rollingUpdate/maxSurge")
            ),
        );
    }
    w.text(0, "Pod Template:");
    w.list(2, "Labels", pairs(obj.pointer("/spec/template/metadata/labels"), "=", &[]));
    w.text(2, "Containers:");
    for c in array(obj, "/spec/template/spec/containers") {
        container(w, 4, c, None, now);
    }
    conditions(w, obj, &["Type", "Status", "Reason"]);
}

/// As `kubectl describe ingress`: the address, class, TLS hosts, and each
/// rule's paths with their backends and the backends' endpoints.
fn ingress(w: &mut Writer, obj: &Value, endpoints: &[Value]) {
    let addresses: Vec<&str> = array(obj, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| str_at(i, "/ip").or_else(|| str_at(i, "/hostname")))
        .collect();
    w.field(0, "Address", &or_none(addresses.join(",")));
    w.field(0, "Ingress Class", str_at(obj, "/spec/ingressClassName").unwrap_or("<none>"));
    let default = obj.pointer("/spec/defaultBackend").map_or("<default>".to_string(), |b| backend(b, endpoints));
    w.field(0, "Default backend", &default);
    let tls = array(obj, "/spec/tls");
    if !tls.is_empty() {
        w.text(0, "TLS:");
        for t in tls {
            let hosts: Vec<String> = array(t, "/hosts").iter().map(scalar).collect();
            w.text(2, &format!("{} terminates {}", str_at(t, "/secretName").unwrap_or("<none>"), hosts.join(",")));
        }
    }
    let mut rows = Vec::new();
    for rule in array(obj, "/spec/rules") {
        rows.push(vec![str_at(rule, "/host").unwrap_or("*").to_string(), String::new(), String::new()]);
        for p in array(rule, "/http/paths") {
            let path = str_at(p, "/path").unwrap_or("/");
            let target = p.get("backend").map_or("<none>".to_string(), |b| backend(b, endpoints));
            rows.push(vec![String::new(), path.to_string(), target]);
        }
    }
    w.text(0, "Rules:");
    w.table(2, &["Host", "Path", "Backends"], rows);
}

/// Each limited resource, what is used of it and the limit, as kubectl
/// describes a quota.
fn resource_quota(w: &mut Writer, obj: &Value) {
    let hard = obj.pointer("/status/hard").or_else(|| obj.pointer("/spec/hard"));
    let rows = hard
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(resource, hard)| {
            let used = obj.pointer("/status/used").and_then(|u| u.get(resource)).map_or("0".to_string(), scalar);
            vec![resource.clone(), used, scalar(hard)]
        })
        .collect();
    w.table(0, &["Resource", "Used", "Hard"], rows);
}

/// One row per item and resource, as kubectl describes a LimitRange.
fn limit_range(w: &mut Writer, obj: &Value) {
    let columns = ["min", "max", "defaultRequest", "default", "maxLimitRequestRatio"];
    let mut rows = Vec::new();
    for item in array(obj, "/spec/limits") {
        let mut resources: Vec<&String> =
            columns.iter().filter_map(|c| item.get(*c).and_then(Value::as_object)).flat_map(|m| m.keys()).collect();
        resources.sort();
        resources.dedup();
        for resource in resources {
            let mut row = vec![str_at(item, "/type").unwrap_or("").to_string(), resource.clone()];
            row.extend(
                columns.iter().map(|c| item.get(*c).and_then(|m| m.get(resource)).map_or("-".to_string(), scalar)),
            );
            rows.push(row);
        }
    }
    let header = ["Type", "Resource", "Min", "Max", "Default Request", "Default Limit", "Max Limit/Request Ratio"];
    w.table(0, &header, rows);
}

/// `svc:port (ip:port,…)`, the endpoints from the Service's Endpoints.
fn backend(b: &Value, endpoints: &[Value]) -> String {
    let Some(service) = str_at(b, "/service/name") else {
        let kind = str_at(b, "/resource/kind").unwrap_or("resource");
        return format!("{kind}/{}", str_at(b, "/resource/name").unwrap_or("?"));
    };
    let port =
        str_at(b, "/service/port/name").map(str::to_string).or_else(|| b.pointer("/service/port/number").map(scalar));
    let port_name = str_at(b, "/service/port/name");
    let eps = endpoints.iter().find(|e| str_at(e, "/metadata/name") == Some(service));
    let addrs: Vec<String> = eps
        .map(|e| array(e, "/subsets"))
        .unwrap_or_default()
        .iter()
        .flat_map(|subset| {
            let ports: Vec<String> = array(subset, "/ports")
                .iter()
                .filter(|p| port_name.is_none() || str_at(p, "/name") == port_name)
                .map(|p| p.get("port").map(scalar).unwrap_or_default())
                .collect();
            array(subset, "/addresses").iter().flat_map(move |a| {
                let ip = str_at(a, "/ip").unwrap_or("?").to_string();
                ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
            })
        })
        .collect();
    let addrs = match (eps, addrs.is_empty()) {
        (None, _) => "<error: endpoints \"".to_string() + service + "\" not found>",
        (Some(_), true) => "<none>".to_string(),
        (Some(_), false) => addrs.join(","),
    };
    format!("{service}:{} ({addrs})", port.unwrap_or_default())
}

/// Everything but apiVersion, kind and metadata, as indented YAML (Secret
/// values as their sizes only).
fn generic(w: &mut Writer, info: &KindInfo, obj: &Value) {
    let Some(root) = obj.as_object() else { return };
    for (key, value) in root.iter().filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) {
        let title = capitalize(key);
        match value {
            Value::Object(map) if info.kind == "Secret" && key == "data" => {
                w.text(0, &format!("{title}:"));
                for (k, v) in map {
                    // Base64: four characters for every three bytes, less padding.
                    let encoded = v.as_str().unwrap_or("");
                    let bytes = encoded.len() / 4 * 3 - encoded.chars().rev().take_while(|c| *c == '=').count();
                    w.field(2, k, &format!("{bytes} bytes"));
                }
            }
            Value::Object(_) | Value::Array(_) => {
                w.text(0, &format!("{title}:"));
                let yaml = serde_yaml_ng::to_string(value).unwrap_or_default();
                yaml.lines().for_each(|line| w.text(2, line));
            }
            other => w.field(0, &title, &scalar(other)),
        }
    }
}

// === pieces ===

/// `status.conditions` as a small table with the given columns.
fn conditions(w: &mut Writer, obj: &Value, columns: &[&str]) {
    let conds = array(obj, "/status/conditions");
    if conds.is_empty() {
        return;
    }
    w.text(0, "Conditions:");
    let mut t = Table::new(columns.iter().map(|c| c.to_string()).collect());
    t.rows.push(columns.iter().map(|c| "-".repeat(c.len())).collect());
    for c in conds {
        t.rows.push(columns.iter().map(|col| str_or(c.get(col.to_ascii_lowercase()), "").to_string()).collect());
    }
    t.render().lines().for_each(|line| w.text(2, line));
}

fn events_section(w: &mut Writer, events: &[Value], now: DateTime<Utc>) {
    if events.is_empty() {
        w.field(0, "Events", "<none>");
        return;
    }
    w.text(0, "Events:");
    let header = ["Type", "Reason", "Age", "From", "Message"];
    let mut t = Table::new(header.iter().map(|h| h.to_string()).collect());
    t.rows.push(header.iter().map(|h| "-".repeat(h.len())).collect());
    let mut sorted: Vec<&Value> = events.iter().collect();
    sorted.sort_by_key(|e| table::parse_time(table::event_time(e)));
    for e in sorted {
        let from = ["/source/component", "/reportingComponent", "/reportingController"]
            .iter()
            .find_map(|p| str_at(e, p))
            .unwrap_or("");
        t.rows.push(vec![
            str_or(e.get("type"), "").to_string(),
            str_or(e.get("reason"), "").to_string(),
            table::last_seen(e, now),
            from.to_string(),
            str_or(e.get("message"), "").trim().to_string(),
        ]);
    }
    t.render().lines().for_each(|line| w.text(2, line));
}

/// `Kind/name` of the owner that controls this object.
fn controller(obj: &Value) -> Option<String> {
    let owner = obj
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))?;
    Some(format!("{}/{}", str_or(owner.get("kind"), ""), str_or(owner.get("name"), "")))
}

// === the writer ===

/// Lines of `Key: value` whose values line up for each indentation level.
#[derive(Default)]
struct Writer {
    lines: Vec<Line>,
}

enum Line {
    Field { indent: usize, key: String, values: Vec<String> },
    Text { indent: usize, text: String },
}

impl Writer {
    fn field(&mut self, indent: usize, key: &str, value: &str) {
        self.lines.push(Line::Field { indent, key: key.to_string(), values: vec![value.to_string()] });
    }

    /// A field with one value a line, or `<none>`.
    fn list(&mut self, indent: usize, key: &str, values: Vec<String>) {
        let values = if values.is_empty() { vec!["<none>".to_string()] } else { values };
        self.lines.push(Line::Field { indent, key: key.to_string(), values });
    }

    fn text(&mut self, indent: usize, text: &str) {
        self.lines.push(Line::Text { indent, text: text.to_string() });
    }

    /// Rows under a header and its underline, each column as wide as its
    /// widest cell.
    fn table(&mut self, indent: usize, header: &[&str], rows: Vec<Vec<String>>) {
        let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        all.push(header.iter().map(|h| "-".repeat(h.chars().count())).collect());
        all.extend(rows);
        let widths: Vec<usize> = (0..header.len())
            .map(|c| all.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        for row in all {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:w$}")).collect();
            self.text(indent, &cells.join("  "));
        }
    }

    fn render(&self) -> String {
        let mut key_width = std::collections::BTreeMap::<usize, usize>::new();
        for line in &self.lines {
            if let Line::Field { indent, key, .. } = line {
                let w = key_width.entry(*indent).or_default();
                *w = (*w).max(key.chars().count());
            }
        }
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Text { indent, text } => {
                    out.push_str(&format!("{:indent$}{}\n", "", text.trim_end()));
                }
                Line::Field { indent, key, values } => {
                    let column = indent + key_width[indent] + 3;
                    let head = format!("{:indent$}{key}:", "");
                    for (n, value) in values.iter().enumerate() {
                        let lead = if n == 0 { head.clone() } else { String::new() };
                        let line = format!("{lead:column$}{value}");
                        out.push_str(line.trim_end());
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

// === reading fields ===

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn str_or<'a>(v: Option<&'a Value>, default: &'a str) -> &'a str {
    v.and_then(Value::as_str).unwrap_or(default)
}

fn array<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A scalar as it would be written: strings without quotes.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `key=value` (or `key: value`) lines of a string map, sorted, less `skip`.
fn pairs(map: Option<&Value>, sep: &str, skip: &[&str]) -> Vec<String> {
    let empty = Map::new();
    let map = map.and_then(Value::as_object).unwrap_or(&empty);
    map.iter().filter(|(k, _)| !skip.contains(&k.as_str())).map(|(k, v)| format!("{k}{sep}{}", scalar(v))).collect()
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

/// `Wed, 01 May 2024 11:55:00 +0000 (5m ago)`.
fn timestamp(ts: Option<&str>, now: DateTime<Utc>) -> String {
    match table::parse_time(ts) {
        Some(t) => format!("{} ({} ago)", t.format("%a, %d %b %Y %H:%M:%S %z"), table::age(ts, now)),
        None => "<unknown>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        table::parse_time(Some("2024-05-01T12:00:00Z")).unwrap()
    }

    fn info(name: &str) -> &'static KindInfo {
        KindInfo::lookup(name).unwrap()
    }

    #[test]
    fn describes_a_pod_with_containers_conditions_and_events() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "demo", "creationTimestamp": "2024-05-01T11:55:00Z",
                "labels": {"app": "web", "pod-template-hash": "abc"},
                "annotations": {LAST_APPLIED: "{}"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "controller": true}]
            },
            "spec": {"nodeName": "n1", "containers": [{
                "name": "web", "image": "busybox", "command": ["httpd", "-f"],
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5}
            }]},
            "status": {
                "phase": "Running", "podIP": "10.1.0.5", "hostIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-05-01T11:56:00Z"}}}]
            }
        });
        let events = [json!({
            "type": "Normal", "reason": "Scheduled", "message": "assigned demo/web-1 to n1",
            "source": {"component": "scheduler"}, "lastTimestamp": "2024-05-01T11:55:00Z"
        })];
        let text = describe(info("po"), &pod, &Related { events: events.to_vec(), ..Default::default() }, now());
        let want = "\
Name:           web-1
Namespace:      demo
Labels:         app=web
                pod-template-hash=abc
Annotations:    <none>
Created:        Wed, 01 May 2024 11:55:00 +0000 (5m ago)
Node:           n1/10.0.0.1
Status:         Running
IP:             10.1.0.5
Controlled By:  ReplicaSet/web-abc
Containers:
  web:
    Image:          busybox
    Port:           8080/TCP
    Command:
      httpd
      -f
    State:          Running
      Started:  Wed, 01 May 2024 11:56:00 +0000 (4m ago)
    Ready:          True
    Restart Count:  0
    Requests:
      cpu:      100m
    Readiness:      http-get http://:8080/ delay=0s timeout=1s period=5s #success=1 #failure=3
    Environment:    <none>
Conditions:
  Type    Status
  ----    ------
  Ready   True
Events:
  Type     Reason      Age   From        Message
  ----     ------      ---   ----        -------
  Normal   Scheduled   5m    scheduler   assigned demo/web-1 to n1
";
        assert_eq!(text, want);
    }

    #[test]
    fn describes_a_quota_and_a_limit_range_as_kubectl_does() {
        let quota = json!({"metadata": {"name": "compute", "namespace": "team"},
            "spec": {"hard": {"pods": "10", "limits.cpu": "2"}},
            "status": {"hard": {"pods": "10", "limits.cpu": "2"}, "used": {"pods": "3", "limits.cpu": "1500m"}}});
        let text = describe(info("quota"), &quota, &Related::default(), now());
        assert!(text.contains("Resource    Used   Hard\n--------    ----   ----\n"), "{text}");
        assert!(text.contains("limits.cpu  1500m  2\n"), "{text}");
        assert!(text.contains("pods        3      10\n"), "{text}");
        let range = json!({"metadata": {"name": "bounds", "namespace": "team"},
            "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}}]}});
        let text = describe(info("limitrange"), &range, &Related::default(), now());
        assert!(
            text.contains("Type       Resource  Min  Max  Default Request  Default Limit  Max Limit/Request Ratio"),
            "{text}"
        );
        assert!(text.contains("Container  cpu       -    1    100m             500m           -"), "{text}");
    }

    #[test]
    fn describes_an_ingress_down_to_endpoints() {
        let ing = json!({
            "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2024-05-01T11:59:00Z"},
            "spec": {"ingressClassName": "skiff",
                "tls": [{"hosts": ["demo.example.com"], "secretName": "demo-tls"}],
                "rules": [{"host": "demo.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                    {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}
        });
        let eps = json!({"metadata": {"name": "web"}, "subsets": [{
            "addresses": [{"ip": "10.42.0.2"}, {"ip": "10.42.1.3"}],
            "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]}]});
        let related = Related { endpoints: vec![eps], ..Default::default() };
        let text = describe(info("ing"), &ing, &related, now());
        let want = "\
Address:          192.0.2.10
Ingress Class:    skiff
Default backend:  <default>
TLS:
  demo-tls terminates demo.example.com
Rules:
  Host              Path  Backends
  ----              ----  --------
  demo.example.com
                    /     web:http (10.42.0.2:8080,10.42.1.3:8080)
                    /api  api:80 (<error: endpoints \"api\" not found>)
";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn describes_why_a_pod_is_not_scheduled() {
        let pod = json!({
            "metadata": {"name": "big", "namespace": "demo", "creationTimestamp": "2024-05-01T11:59:00Z"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu."
            }]}
        });
        let events = [json!({
            "type": "Warning", "reason": "FailedScheduling", "message": "0/3 nodes are available: 3 Insufficient cpu.",
            "source": {"component": "default-scheduler"}, "count": 3,
            "firstTimestamp": "2024-05-01T11:59:00Z", "lastTimestamp": "2024-05-01T11:59:50Z"
        })];
        let text = describe(info("po"), &pod, &Related { events: events.to_vec(), ..Default::default() }, now());
        assert!(text.contains("\nNode:         <none>\n"), "{text}");
        assert!(
            text.contains(
                "\nConditions:\n  Type           Status   Reason          Message\n  \
                 ----           ------   ------          -------\n  \
                 PodScheduled   False    Unschedulable   0/3 nodes are available: 3 Insufficient cpu.\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  Warning   FailedScheduling   10s (x3 over 60s)   default-scheduler   0/3 nodes are available: 3 Insufficient cpu.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn describes_a_deployment() {
        let deploy = json!({
            "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2024-05-01T10:00:00Z"},
            "spec": {
                "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "50%"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "img"}]}}
            },
            "status": {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 1, "unavailableReplicas": 1}
        });
        let text = describe(info("deploy"), &deploy, &Related::default(), now());
        assert!(text.contains("\nSelector:               app=web\n"), "{text}");
        assert!(
            text.contains("\nReplicas:               2 desired | 2 updated | 2 total | 1 available | 1 unavailable\n"),
            "{text}"
        );
        assert!(text.contains("\nRollingUpdateStrategy:  1 max unavailable, 50% max surge\n"), "{text}");
        assert!(
            text.contains("\nPod Template:\n  Labels:  app=web\n  Containers:\n    web:\n      Image:        img\n"),
            "{text}"
        );
        assert!(text.ends_with("\nEvents:                 <none>\n"), "{text}");
    }

    #[test]
    fn describes_other_kinds_as_yaml_and_hides_secret_values() {
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "d"}, "data": {"a": "1"}});
        let text = describe(info("cm"), &cm, &Related::default(), now());
        assert!(text.contains("\nData:\n  a: '1'\n"), "{text}");
        let secret = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"password": "aHVudGVyMg=="}});
        let text = describe(info("secret"), &secret, &Related::default(), now());
        assert!(text.contains("\nData:\n  password:  7 bytes\n"), "{text}");
        assert!(text.contains("\nType:"), "{text}");
        assert!(!text.contains("aHVudGVyMg"), "{text}");
    }
}
