//! A container's part of `describe`: image, ports, command, state,
//! resources, probes and environment, as kubectl lays them out.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{capitalize, or_none, scalar, str_or, timestamp, Writer};

/// One container: image, ports, command, state, readiness, resources, probes, env.
pub(super) fn container(w: &mut Writer, indent: usize, c: &Value, status: Option<&Value>, now: DateTime<Utc>) {
    w.text(indent, &format!("{}:", str_or(c.get("name"), "")));
    let i = indent + 2;
    w.field(i, "Image", str_or(c.get("image"), ""));
    let ports: Vec<String> = c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            format!("{}/{}", p.get("containerPort").map_or(String::new(), scalar), str_or(p.get("protocol"), "TCP"))
        })
        .collect();
    w.field(i, if ports.len() > 1 { "Ports" } else { "Port" }, &or_none(ports.join(", ")));
    for (key, field) in [("Command", "command"), ("Args", "args")] {
        if let Some(words) = c.get(field).and_then(Value::as_array) {
            w.text(i, &format!("{key}:"));
            words.iter().for_each(|word| w.text(i + 2, &scalar(word)));
        }
    }
    if let Some(status) = status {
        state(w, i, "State", status.get("state"), now);
        if status.pointer("/lastState").and_then(Value::as_object).is_some_and(|s| !s.is_empty()) {
            state(w, i, "Last State", status.get("lastState"), now);
        }
        let ready = status.get("ready").and_then(Value::as_bool).unwrap_or(false);
        w.field(i, "Ready", if ready { "True" } else { "False" });
        w.field(i, "Restart Count", &status.get("restartCount").and_then(Value::as_i64).unwrap_or(0).to_string());
    }
    for (key, pointer) in [("Limits", "/resources/limits"), ("Requests", "/resources/requests")] {
        if let Some(map) = c.pointer(pointer).and_then(Value::as_object).filter(|m| !m.is_empty()) {
            w.text(i, &format!("{key}:"));
            map.iter().for_each(|(k, v)| w.field(i + 2, k, &scalar(v)));
        }
    }
    for (key, field) in [("Liveness", "livenessProbe"), ("Readiness", "readinessProbe"), ("Startup", "startupProbe")] {
        if let Some(p) = c.get(field) {
            w.field(i, key, &probe(p));
        }
    }
    let env = c.get("env").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    if env.is_empty() {
        w.field(i, "Environment", "<none>");
    } else {
        w.text(i, "Environment:");
        for var in env {
            let value = match var.get("value") {
                Some(v) => scalar(v),
                None if var.get("valueFrom").is_some() => "<set from a reference>".to_string(),
                None => String::new(),
            };
            w.field(i + 2, str_or(var.get("name"), ""), &value);
        }
    }
}

/// `Running` / `Waiting` / `Terminated` with what goes with each.
fn state(w: &mut Writer, indent: usize, key: &str, state: Option<&Value>, now: DateTime<Utc>) {
    let Some((name, detail)) = state.and_then(Value::as_object).and_then(|m| m.iter().next()) else {
        w.field(indent, key, "Waiting");
        return;
    };
    w.field(indent, key, &capitalize(name));
    let fields = [
        ("Reason", "reason"),
        ("Message", "message"),
        ("Exit Code", "exitCode"),
        ("Signal", "signal"),
        ("Started", "startedAt"),
        ("Finished", "finishedAt"),
    ];
    for (label, field) in fields {
        match detail.get(field) {
            Some(Value::String(t)) if field.ends_with("At") => w.field(indent + 2, label, &timestamp(Some(t), now)),
            Some(v) if !v.is_null() => w.field(indent + 2, label, &scalar(v)),
            _ => {}
        }
    }
}

/// `http-get http://:8080/ delay=0s timeout=1s period=10s #success=1 #failure=3`.
fn probe(p: &Value) -> String {
    let how = if let Some(http) = p.get("httpGet") {
        let scheme = str_or(http.get("scheme"), "HTTP").to_ascii_lowercase();
        let port = http.get("port").map_or(String::new(), scalar);
        format!("http-get {scheme}://{}:{port}{}", str_or(http.get("host"), ""), str_or(http.get("path"), "/"))
    } else if let Some(tcp) = p.get("tcpSocket") {
        format!("tcp-socket {}:{}", str_or(tcp.get("host"), ""), tcp.get("port").map_or(String::new(), scalar))
    } else if let Some(cmd) = p.pointer("/exec/command").and_then(Value::as_array) {
        format!("exec [{}]", cmd.iter().map(scalar).collect::<Vec<_>>().join(" "))
    } else {
        "unknown".to_string()
    };
    let n = |f: &str, default: i64| p.get(f).and_then(Value::as_i64).unwrap_or(default);
    format!(
        "{how} delay={}s timeout={}s period={}s #success={} #failure={}",
        n("initialDelaySeconds", 0),
        n("timeoutSeconds", 1),
        n("periodSeconds", 10),
        n("successThreshold", 1),
        n("failureThreshold", 3)
    )
}
