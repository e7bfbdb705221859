//! The columns kubectl shows for each kind after NAME, and how each cell is
//! read from the object. Kinds without their own columns show AGE only.
//! skiffctl prints them; the apiserver's REST front serves them as a
//! meta.k8s.io Table, so `skiffctl get` and `kubectl get` agree.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// kubectl's human-readable duration (`HumanDuration`): exact seconds up to
/// two minutes, then coarser units as the age grows.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// How long ago an RFC 3339 timestamp was, or `<unknown>`.
pub fn age(timestamp: Option<&str>, now: DateTime<Utc>) -> String {
    match parse_time(timestamp) {
        Some(t) => human_duration((now - t).num_seconds()),
        None => "<unknown>".to_string(),
    }
}

pub fn parse_time(timestamp: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(timestamp?).ok().map(|t| t.with_timezone(&Utc))
}

/// An object's age from `metadata.creationTimestamp`.
pub fn object_age(obj: &Value, now: DateTime<Utc>) -> String {
    age(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now)
}

pub fn header(kind: &str, wide: bool) -> &'static [&'static str] {
    match (kind, wide) {
        ("Pod", false) => &["READY", "STATUS", "RESTARTS", "AGE"],
        ("Pod", true) => &["READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        ("Deployment", false) => &["READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ("Deployment", true) => &["READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        ("ReplicaSet", false) => &["DESIRED", "CURRENT", "READY", "AGE"],
        ("ReplicaSet", true) => &["DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        ("StatefulSet", false) => &["READY", "AGE"],
        ("StatefulSet", true) => &["READY", "AGE", "CONTAINERS", "IMAGES"],
        ("DaemonSet", _) => &["DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ("Job", false) => &["STATUS", "COMPLETIONS", "DURATION", "AGE"],
        ("Job", true) => &["STATUS", "COMPLETIONS", "DURATION", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        ("CronJob", false) => &["SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
        ("CronJob", true) => {
            &["SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
        }
        ("Service", false) => &["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        ("Service", true) => &["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"],
        ("Node", false) => &["STATUS", "ROLES", "AGE", "VERSION"],
        ("Node", true) => &["STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "OS-IMAGE", "CONTAINER-RUNTIME"],
        ("Namespace", _) => &["STATUS", "AGE"],
        ("ConfigMap", _) => &["DATA", "AGE"],
        ("Secret", _) => &["TYPE", "DATA", "AGE"],
        ("Event", _) => &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        ("Ingress", _) => &["CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
        ("IngressClass", _) => &["CONTROLLER", "PARAMETERS", "AGE"],
        ("Role" | "ClusterRole" | "LimitRange", _) => &["CREATED AT"],
        ("ResourceQuota", _) => &["AGE", "REQUEST", "LIMIT"],
        ("CertificateSigningRequest", _) => &["AGE", "SIGNERNAME", "REQUESTOR", "CONDITION"],
        ("RoleBinding" | "ClusterRoleBinding", false) => &["ROLE", "AGE"],
        ("RoleBinding" | "ClusterRoleBinding", true) => &["ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"],
        _ => &["AGE"],
    }
}

pub fn cells(kind: &str, obj: &Value, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let mut cells = match kind {
        "Pod" => pod(obj, now),
        "Deployment" => vec![
            format!("{}/{}", int(obj, "/status/readyReplicas"), replicas(obj)),
            int(obj, "/status/updatedReplicas").to_string(),
            int(obj, "/status/availableReplicas").to_string(),
            object_age(obj, now),
        ],
        "ReplicaSet" => vec![
            replicas(obj).to_string(),
            int(obj, "/status/replicas").to_string(),
            int(obj, "/status/readyReplicas").to_string(),
            object_age(obj, now),
        ],
        "StatefulSet" => vec![format!("{}/{}", int(obj, "/status/readyReplicas"), replicas(obj)), object_age(obj, now)],
        "DaemonSet" => vec![
            int(obj, "/status/desiredNumberScheduled").to_string(),
            int(obj, "/status/currentNumberScheduled").to_string(),
            int(obj, "/status/numberReady").to_string(),
            int(obj, "/status/updatedNumberScheduled").to_string(),
            int(obj, "/status/numberAvailable").to_string(),
            object_age(obj, now),
        ],
        "Job" => job(obj, now),
        "CronJob" => vec![
            text(obj, "/spec/schedule", ""),
            text(obj, "/spec/timeZone", "<none>"),
            obj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false).to_string(),
            array(obj, "/status/active").len().to_string(),
            match str_at(obj, "/status/lastScheduleTime") {
                Some(t) => age(Some(t), now),
                None => "<none>".to_string(),
            },
            object_age(obj, now),
        ],
        "Service" => service(obj, now),
        "Node" => node(obj, now),
        "Namespace" => vec![text(obj, "/status/phase", "Active"), object_age(obj, now)],
        "ConfigMap" => vec![(len(obj, "data") + len(obj, "binaryData")).to_string(), object_age(obj, now)],
        "Secret" => vec![text(obj, "/type", "Opaque"), len(obj, "data").to_string(), object_age(obj, now)],
        "Event" => event(obj, now),
        "Ingress" => ingress(obj, now),
        "IngressClass" => {
            let parameters = match (obj.pointer("/spec/parameters/kind"), obj.pointer("/spec/parameters/name")) {
                (Some(kind), Some(name)) => format!("{}/{}", str_or(Some(kind), ""), str_or(Some(name), "")),
                _ => "<none>".to_string(),
            };
            vec![text(obj, "/spec/controller", "<none>"), parameters, object_age(obj, now)]
        }
        "Role" | "ClusterRole" | "LimitRange" => vec![created_at(obj)],
        "ResourceQuota" => {
            let (requests, limits) = quota_usage(obj);
            vec![object_age(obj, now), requests, limits]
        }
        "CertificateSigningRequest" => vec![
            object_age(obj, now),
            text(obj, "/spec/signerName", "<none>"),
            text(obj, "/spec/username", "<none>"),
            csr_condition(obj),
        ],
        "RoleBinding" | "ClusterRoleBinding" => {
            vec![format!("{}/{}", text(obj, "/roleRef/kind", ""), text(obj, "/roleRef/name", "")), object_age(obj, now)]
        }
        _ => vec![object_age(obj, now)],
    };
    if wide {
        cells.extend(wide_cells(kind, obj));
    }
    cells
}

fn wide_cells(kind: &str, obj: &Value) -> Vec<String> {
    match kind {
        "Pod" => vec![text(obj, "/status/podIP", "<none>"), text(obj, "/spec/nodeName", "<none>")],
        "Deployment" | "ReplicaSet" => {
            let (names, images) = containers(obj.pointer("/spec/template/spec/containers"));
            vec![names, images, selector(obj.pointer("/spec/selector"))]
        }
        "StatefulSet" => {
            let (names, images) = containers(obj.pointer("/spec/template/spec/containers"));
            vec![names, images]
        }
        "Job" => {
            let (names, images) = containers(obj.pointer("/spec/template/spec/containers"));
            vec![names, images, selector(obj.pointer("/spec/selector"))]
        }
        "CronJob" => {
            let (names, images) = containers(obj.pointer("/spec/jobTemplate/spec/template/spec/containers"));
            vec![names, images, selector(obj.pointer("/spec/jobTemplate/spec/selector"))]
        }
        "Service" => vec![map_selector(obj.pointer("/spec/selector"))],
        "RoleBinding" | "ClusterRoleBinding" => binding_subjects(obj),
        "Node" => vec![
            node_address(obj, "InternalIP"),
            text(obj, "/status/nodeInfo/osImage", "<unknown>"),
            text(obj, "/status/nodeInfo/containerRuntimeVersion", "<unknown>"),
        ],
        _ => Vec::new(),
    }
}

// === cells by kind ===

/// READY, STATUS, RESTARTS, AGE, worked out as kubectl's pod printer does.
fn pod(obj: &Value, now: DateTime<Utc>) -> Vec<String> {
    let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let statuses = array(obj, "/status/containerStatuses");
    let ready = statuses.iter().filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true)).count();
    let restarts: i64 = statuses.iter().map(|s| s.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
    let last_restart = statuses
        .iter()
        .filter_map(|s| parse_time(s.pointer("/lastState/terminated/finishedAt").and_then(Value::as_str)))
        .max();
    let restarts = match last_restart {
        Some(t) => format!("{restarts} ({} ago)", human_duration((now - t).num_seconds())),
        None => restarts.to_string(),
    };
    vec![format!("{ready}/{total}"), pod_status(obj), restarts, object_age(obj, now)]
}

/// The STATUS column: the pod's reason or phase, overridden by a failing
/// init container or the first waiting or terminated container's reason,
/// and `Terminating` once deleted.
pub fn pod_status(obj: &Value) -> String {
    let mut reason = text(obj, "/status/reason", "");
    if reason.is_empty() {
        reason = text(obj, "/status/phase", "Unknown");
    }
    for init in array(obj, "/status/initContainerStatuses") {
        let state = init.get("state");
        if let Some(term) = state.and_then(|s| s.get("terminated")) {
            if term.get("exitCode").and_then(Value::as_i64).unwrap_or(0) != 0 {
                reason = format!("Init:{}", str_or(term.get("reason"), "Error"));
                break;
            }
        } else if let Some(waiting) = state.and_then(|s| s.get("waiting")) {
            let why = str_or(waiting.get("reason"), "");
            if !why.is_empty() && why != "PodInitializing" {
                reason = format!("Init:{why}");
                break;
            }
        }
    }
    for status in array(obj, "/status/containerStatuses").iter().rev() {
        let state = status.get("state");
        if let Some(why) = state.and_then(|s| s.pointer("/waiting/reason")).and_then(Value::as_str) {
            if !why.is_empty() {
                reason = why.to_string();
            }
        } else if let Some(term) = state.and_then(|s| s.get("terminated")) {
            reason = match term.get("reason").and_then(Value::as_str) {
                Some(why) if !why.is_empty() => why.to_string(),
                _ => format!("ExitCode:{}", term.get("exitCode").and_then(Value::as_i64).unwrap_or(0)),
            };
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        reason = if reason == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    reason
}

/// As kubectl prints an Ingress: its class, the rules' hosts (`*` for a
/// rule without one, at most three named), the load balancer's addresses,
/// and 443 beside 80 when it terminates TLS.
/// STATUS, COMPLETIONS, DURATION, AGE, as kubectl's job printer has them.
fn job(obj: &Value, now: DateTime<Utc>) -> Vec<String> {
    let condition =
        |type_: &str| array(obj, "/status/conditions").iter().any(|c| c["type"] == type_ && c["status"] == "True");
    let status = ["Complete", "Failed", "FailureTarget", "SuccessCriteriaMet", "Suspended"]
        .into_iter()
        .find(|c| condition(c))
        .unwrap_or("Running");
    let succeeded = int(obj, "/status/succeeded");
    let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match obj.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(1) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match parse_time(str_at(obj, "/status/startTime")) {
        None => String::new(),
        Some(start) => {
            let end = parse_time(str_at(obj, "/status/completionTime")).unwrap_or(now);
            human_duration((end - start).num_seconds())
        }
    };
    vec![status.to_string(), completions, duration, object_age(obj, now)]
}

fn ingress(obj: &Value, now: DateTime<Utc>) -> Vec<String> {
    let class = obj
        .pointer("/spec/ingressClassName")
        .or_else(|| obj.pointer("/metadata/annotations/kubernetes.io~1ingress.class"))
        .and_then(str_owned)
        .unwrap_or_else(|| "<none>".into());
    let hosts: Vec<&str> = array(obj, "/spec/rules")
        .iter()
        .map(|r| Some(str_or(r.get("host"), "")).filter(|h| !h.is_empty()).unwrap_or("*"))
        .collect();
    let hosts = match hosts.len() {
        0 => "*".to_string(),
        n if n > 3 => format!("{} + {} more...", hosts[..3].join(","), n - 3),
        _ => hosts.join(","),
    };
    let address: Vec<String> = array(obj, "/status/loadBalancer/ingress")
        .iter()
        .filter_map(|i| i.get("ip").or_else(|| i.get("hostname")).and_then(str_owned))
        .collect();
    let ports = if array(obj, "/spec/tls").is_empty() { "80" } else { "80, 443" };
    vec![class, hosts, address.join(","), ports.to_string(), object_age(obj, now)]
}

/// CREATED AT of a Role or ClusterRole: the creation time itself, in UTC,
/// as kubectl prints it, rather than an age.
/// A quota's `resource: used/hard` pairs as kubectl lists them: limits.*
/// in LIMIT, everything else in REQUEST.
fn quota_usage(obj: &Value) -> (String, String) {
    let (mut requests, mut limits) = (Vec::new(), Vec::new());
    for (resource, hard) in obj.pointer("/status/hard").and_then(Value::as_object).into_iter().flatten() {
        let used = obj.pointer(&format!("/status/used/{}", resource.replace('~', "~0").replace('/', "~1")));
        let pair = format!("{resource}: {}/{}", str_or(used, "0"), str_or(Some(hard), ""));
        if resource.starts_with("limits.") {
            limits.push(pair)
        } else {
            requests.push(pair)
        }
    }
    (requests.join(", "), limits.join(", "))
}

fn created_at(obj: &Value) -> String {
    match parse_time(str_at(obj, "/metadata/creationTimestamp")) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => "<unknown>".to_string(),
    }
}

/// USERS, GROUPS and SERVICEACCOUNTS of a binding, each `, `-joined; a
/// ServiceAccount as `namespace/name` when the subject names its namespace.
fn binding_subjects(obj: &Value) -> Vec<String> {
    let (mut users, mut groups, mut service_accounts) = (Vec::new(), Vec::new(), Vec::new());
    for s in array(obj, "/subjects") {
        let name = str_or(s.get("name"), "");
        match str_or(s.get("kind"), "") {
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            "ServiceAccount" => service_accounts.push(match str_or(s.get("namespace"), "") {
                "" => name.to_string(),
                ns => format!("{ns}/{name}"),
            }),
            _ => {}
        }
    }
    vec![users.join(", "), groups.join(", "), service_accounts.join(", ")]
}

fn service(obj: &Value, now: DateTime<Utc>) -> Vec<String> {
    let ty = text(obj, "/spec/type", "ClusterIP");
    let cluster_ip = text(obj, "/spec/clusterIP", "<none>");
    let mut external: Vec<String> = array(obj, "/spec/externalIPs").iter().filter_map(str_owned).collect();
    if ty == "LoadBalancer" {
        external.extend(
            array(obj, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| i.get("ip").or_else(|| i.get("hostname")).and_then(str_owned)),
        );
    }
    let external = match (external.is_empty(), ty.as_str()) {
        (false, _) => external.join(","),
        (true, "LoadBalancer") => "<pending>".to_string(),
        (true, "ExternalName") => text(obj, "/spec/externalName", "<none>"),
        (true, _) => "<none>".to_string(),
    };
    let ports: Vec<String> = array(obj, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = str_or(p.get("protocol"), "TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) if node_port != 0 => format!("{port}:{node_port}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".to_string() } else { ports.join(",") };
    vec![ty, cluster_ip, external, ports, object_age(obj, now)]
}

fn node(obj: &Value, now: DateTime<Utc>) -> Vec<String> {
    let ready = array(obj, "/status/conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut status = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<&str> = crate::meta::labels(obj)
        .into_iter()
        .flat_map(|labels| labels.keys())
        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort_unstable();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    vec![status, roles, object_age(obj, now), text(obj, "/status/nodeInfo/kubeletVersion", "")]
}

fn node_address(obj: &Value, ty: &str) -> String {
    array(obj, "/status/addresses")
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some(ty))
        .and_then(|a| a.get("address").and_then(str_owned))
        .unwrap_or_else(|| "<none>".to_string())
}

/// LAST SEEN (with `(xN over AGE)` for repeats), TYPE, REASON, OBJECT, MESSAGE.
fn event(obj: &Value, now: DateTime<Utc>) -> Vec<String> {
    let object = format!(
        "{}/{}",
        text(obj, "/involvedObject/kind", "").to_ascii_lowercase(),
        text(obj, "/involvedObject/name", "")
    );
    vec![
        last_seen(obj, now),
        text(obj, "/type", ""),
        text(obj, "/reason", ""),
        object,
        text(obj, "/message", "").trim().to_string(),
    ]
}

/// How long ago an Event was last seen, with `(xN over AGE)` for repeats.
pub fn last_seen(obj: &Value, now: DateTime<Utc>) -> String {
    let last_seen = age(event_time(obj), now);
    match obj.get("count").and_then(Value::as_i64).unwrap_or(1) {
        count if count > 1 => {
            let first = ["/firstTimestamp", "/metadata/creationTimestamp"].iter().find_map(|p| str_at(obj, p));
            format!("{last_seen} (x{count} over {})", age(first, now))
        }
        _ => last_seen,
    }
}

/// When an Event was last seen: its lastTimestamp, eventTime, or creation.
pub fn event_time(obj: &Value) -> Option<&str> {
    ["/lastTimestamp", "/eventTime", "/firstTimestamp", "/metadata/creationTimestamp"]
        .iter()
        .find_map(|p| str_at(obj, p))
}

// === reading fields ===

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn text(obj: &Value, pointer: &str, default: &str) -> String {
    str_at(obj, pointer).unwrap_or(default).to_string()
}

fn str_or<'a>(v: Option<&'a Value>, default: &'a str) -> &'a str {
    v.and_then(Value::as_str).unwrap_or(default)
}

fn str_owned(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// `spec.replicas`, which Kubernetes defaults to 1.
fn replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

fn array<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn len(obj: &Value, field: &str) -> usize {
    obj.get(field).and_then(Value::as_object).map_or(0, |m| m.len())
}

/// Container names and images, comma-joined.
fn containers(list: Option<&Value>) -> (String, String) {
    let list = list.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let names: Vec<&str> = list.iter().map(|c| str_or(c.get("name"), "")).collect();
    let images: Vec<&str> = list.iter().map(|c| str_or(c.get("image"), "")).collect();
    (names.join(","), images.join(","))
}

/// A LabelSelector (`matchLabels` and `matchExpressions`) as a string.
pub fn selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return "<none>".to_string() };
    let mut terms: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for expr in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = str_or(expr.get("key"), "");
        let values: Vec<&str> =
            expr.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        terms.push(match str_or(expr.get("operator"), "") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op} ({})", values.join(",")),
        });
    }
    if terms.is_empty() {
        "<none>".to_string()
    } else {
        terms.join(",")
    }
}

/// A plain `key: value` selector (a Service's) as a string.
fn map_selector(sel: Option<&Value>) -> String {
    let terms: Vec<String> = sel
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if terms.is_empty() {
        "<none>".to_string()
    } else {
        terms.join(",")
    }
}

/// As kubectl: the decision (`Approved`, `Denied`, or `Pending` without
/// one), then `Issued` once the certificate is there, or `Failed`.
fn csr_condition(obj: &Value) -> String {
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut shown: Vec<String> = conditions
        .iter()
        .filter(|c| c["status"] == "True")
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect();
    if shown.is_empty() {
        shown.push("Pending".into());
    }
    if obj.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) {
        shown.push("Issued".into());
    }
    shown.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        parse_time(Some("2024-05-01T12:00:00Z")).unwrap()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 25 * 60, "3h25m"),
            (8 * 3600 + 59 * 60, "8h"),
            (47 * 3600, "47h"),
            (2 * 86400, "2d"),
            (4 * 86400 + 5 * 3600, "4d5h"),
            (30 * 86400, "30d"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}s");
        }
    }

    #[test]
    fn jobs_and_cron_jobs_read_like_kubectl() {
        let job = serde_json::json!({
            "metadata": {"creationTimestamp": "2024-05-01T11:59:00Z"},
            "spec": {"completions": 5, "parallelism": 2},
            "status": {"succeeded": 5, "startTime": "2024-05-01T11:59:00Z", "completionTime": "2024-05-01T11:59:42Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}
        });
        assert_eq!(cells("Job", &job, false, now()), ["Complete", "5/5", "42s", "60s"]);
        let queue = serde_json::json!({"spec": {"parallelism": 3}, "status": {"succeeded": 1}});
        assert_eq!(cells("Job", &queue, false, now())[..3], ["Running", "1/1 of 3", ""]);
        let cron = serde_json::json!({
            "metadata": {"creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"schedule": "*/5 * * * *", "suspend": false},
            "status": {"active": [{"name": "j"}], "lastScheduleTime": "2024-05-01T11:55:00Z"}
        });
        assert_eq!(cells("CronJob", &cron, false, now()), ["*/5 * * * *", "<none>", "false", "1", "5m", "60m"]);
    }

    #[test]
    fn age_parses_timestamps() {
        assert_eq!(age(Some("2024-05-01T11:57:00Z"), now()), "3m");
        assert_eq!(age(Some("2024-05-01T13:57:00+02:00"), now()), "3m");
        assert_eq!(age(Some("not a time"), now()), "<unknown>");
        assert_eq!(age(None, now()), "<unknown>");
    }
}
