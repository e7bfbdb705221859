//! Printing objects as kubectl prints them: aligned tables with per-kind
//! columns, ages like `5s`, `3m`, `2h`, `4d`, and the List wrapper of
//! `-o json|yaml`.

use skiff_api::columns;
pub use skiff_api::columns::{age, event_time, last_seen, parse_time, pod_status, selector};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use skiff_api::KindInfo;

/// Rows under a header, aligned like kubectl's tabwriter: each column is as
/// wide as its widest cell plus three spaces (six at least); the last one
/// is not padded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<String>) -> Self {
        Self { header, rows: Vec::new() }
    }

    /// The width each column takes, padding included.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths.into_iter().map(|w| (w + 3).max(6)).collect()
    }

    /// The header and rows, one line each, newline-terminated.
    pub fn render(&self) -> String {
        let widths = self.widths();
        std::iter::once(&self.header).chain(&self.rows).map(|row| format_row(row, &widths)).collect()
    }
}

/// One line of a table whose columns are `widths` wide (wider cells push
/// the rest of the line right, as kubectl's do in watch mode).
pub fn format_row(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < row.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()).max(1);
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    line.push('\n');
    line
}

/// Builds table rows for one kind.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub info: &'static KindInfo,
    /// `-o wide`: the extra columns.
    pub wide: bool,
    /// `-A`: a NAMESPACE column first.
    pub all_namespaces: bool,
    pub now: DateTime<Utc>,
}

impl Printer {
    pub fn header(&self) -> Vec<String> {
        let mut header = Vec::new();
        if self.all_namespaces && self.info.namespaced {
            header.push("NAMESPACE".to_string());
        }
        if self.info.kind != "Event" {
            header.push("NAME".to_string());
        }
        header.extend(columns::header(self.info.kind, self.wide).iter().map(|c| c.to_string()));
        header
    }

    pub fn row(&self, obj: &Value) -> Vec<String> {
        let mut row = Vec::new();
        if self.all_namespaces && self.info.namespaced {
            row.push(skiff_api::meta::namespace(obj).to_string());
        }
        if self.info.kind != "Event" {
            row.push(skiff_api::meta::name(obj).to_string());
        }
        row.extend(columns::cells(self.info.kind, obj, self.wide, self.now));
        row
    }

    pub fn table<'a>(&self, objects: impl IntoIterator<Item = &'a Value>) -> Table {
        let mut table = Table::new(self.header());
        table.rows.extend(objects.into_iter().map(|o| self.row(o)));
        table
    }
}

/// What `-o json|yaml` prints for a list: a Kubernetes `<Kind>List`.
pub fn list_object(info: &KindInfo, items: Vec<Value>, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": info.list_kind(),
        "metadata": { "resourceVersion": resource_version },
        "items": items,
    })
}

/// Pretty JSON with a trailing newline.
pub fn to_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    text.push('\n');
    text
}

pub fn to_yaml(value: &Value) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        parse_time(Some("2024-05-01T12:00:00Z")).unwrap()
    }

    fn lookup(name: &str) -> &'static KindInfo {
        KindInfo::lookup(name).unwrap()
    }

    #[test]
    fn renders_aligned_columns_with_unpadded_last() {
        let mut table = Table::new(vec!["NAME".into(), "AGE".into()]);
        table.rows.push(vec!["a-long-name".into(), "5s".into()]);
        table.rows.push(vec!["b".into(), "10d".into()]);
        assert_eq!(table.render(), "NAME          AGE\na-long-name   5s\nb             10d\n");
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-7d4b9-x2x", "namespace": "demo", "creationTimestamp": "2024-05-01T11:55:00Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "busybox"}, {"name": "side", "image": "busybox"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "containerStatuses": [
                    {"name": "web", "ready": true, "restartCount": 2, "state": {"running": {}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:59:00Z"}}},
                    {"name": "side", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                ]
            }
        })
    }

    #[test]
    fn renders_pods() {
        let printer = Printer { info: lookup("po"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(
            printer.table([&pod()]).render(),
            "NAME            READY   STATUS             RESTARTS      AGE\n\
             web-7d4b9-x2x   1/2     CrashLoopBackOff   3 (60s ago)   5m\n"
        );
    }

    #[test]
    fn renders_pods_wide_across_namespaces() {
        let printer = Printer { info: lookup("pods"), wide: true, all_namespaces: true, now: now() };
        let mut running = pod();
        running["status"]["containerStatuses"][1] = json!({"name": "side", "ready": true, "restartCount": 0});
        running["status"]["containerStatuses"][0]["lastState"] = json!({});
        let pending = json!({
            "metadata": {"name": "new", "namespace": "default", "creationTimestamp": "2024-05-01T11:59:50Z"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"}
        });
        assert_eq!(
            printer.table([&running, &pending]).render(),
            "NAMESPACE   NAME            READY   STATUS    RESTARTS   AGE   IP           NODE\n\
             demo        web-7d4b9-x2x   2/2     Running   2          5m    10.244.1.7   node-1\n\
             default     new             0/1     Pending   0          10s   <none>       <none>\n"
        );
    }

    #[test]
    fn terminating_pods_say_so() {
        let mut p = pod();
        p["metadata"]["deletionTimestamp"] = json!("2024-05-01T11:59:59Z");
        let printer = Printer { info: lookup("po"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.row(&p)[2], "Terminating");
    }

    #[test]
    fn renders_deployments() {
        let deploy = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2024-04-29T12:00:00Z"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "127.0.0.1:5000/busybox:latest"}]}}
            },
            "status": {"replicas": 3, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1}
        });
        let printer = Printer { info: lookup("deploy"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(
            printer.table([&deploy]).render(),
            "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    1/3     2            1           2d\n"
        );
        let wide = Printer { wide: true, ..printer };
        assert_eq!(
            wide.row(&deploy)[5..],
            ["web".to_string(), "127.0.0.1:5000/busybox:latest".to_string(), "app=web".to_string()]
        );
        let fresh = json!({"metadata": {"name": "new"}, "spec": {"replicas": 2}});
        assert_eq!(printer.row(&fresh), ["new", "0/2", "0", "0", "<unknown>"]);
    }

    #[test]
    fn renders_services_nodes_and_generic_kinds() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.12",
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
        });
        let printer = Printer { info: lookup("svc"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.row(&svc), ["web", "NodePort", "10.96.0.12", "<none>", "80:30080/TCP,53/UDP", "60m"]);

        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}, "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v0.1.0"}}
        });
        let printer = Printer { info: lookup("no"), wide: false, all_namespaces: true, now: now() };
        assert_eq!(printer.header(), ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
        assert_eq!(printer.row(&node), ["n1", "Ready,SchedulingDisabled", "control-plane", "60m", "v0.1.0"]);

        let ing = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "spec": {"ingressClassName": "skiff", "tls": [{"hosts": ["a.example"]}],
                     "rules": [{"host": "a.example"}, {"http": {}}, {"host": "b.example"}, {"host": "c.example"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example"}]}}
        });
        let printer = Printer { info: lookup("ing"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]);
        assert_eq!(
            printer.row(&ing),
            ["web", "skiff", "a.example,*,b.example + 1 more...", "192.0.2.10,lb.example", "80, 443", "60m"]
        );
        let bare = json!({"metadata": {"name": "bare", "creationTimestamp": "2024-05-01T11:00:00Z"}, "spec": {}});
        assert_eq!(printer.row(&bare), ["bare", "<none>", "*", "", "80", "60m"]);

        let class = json!({"metadata": {"name": "skiff", "creationTimestamp": "2024-05-01T11:00:00Z"},
                           "spec": {"controller": "skiff.io/ingress-controller"}});
        let printer = Printer { info: lookup("ingressclass"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["NAME", "CONTROLLER", "PARAMETERS", "AGE"]);
        assert_eq!(printer.row(&class), ["skiff", "skiff.io/ingress-controller", "<none>", "60m"]);

        let role = json!({"metadata": {"name": "system:node", "creationTimestamp": "2024-05-01T13:00:00+02:00"}});
        let printer = Printer { info: lookup("clusterrole"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["NAME", "CREATED AT"]);
        assert_eq!(printer.row(&role), ["system:node", "2024-05-01T11:00:00Z"]);

        let binding = json!({
            "metadata": {"name": "edit", "namespace": "team-a", "creationTimestamp": "2024-05-01T11:00:00Z"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}, {"kind": "ServiceAccount", "name": "builder"}]
        });
        let printer = Printer { info: lookup("rolebinding"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["NAME", "ROLE", "AGE"]);
        assert_eq!(printer.row(&binding), ["edit", "ClusterRole/edit", "60m"]);
        let printer = Printer { info: lookup("rolebinding"), wide: true, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]);
        assert_eq!(
            printer.row(&binding),
            ["edit", "ClusterRole/edit", "60m", "alice, bob", "devs", "tools/ci, builder"]
        );

        let lease = json!({"metadata": {"name": "leader", "creationTimestamp": "2024-05-01T11:59:00Z"}});
        let printer = Printer { info: lookup("lease"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["NAME", "AGE"]);
        assert_eq!(printer.row(&lease), ["leader", "60s"]);
    }

    #[test]
    fn renders_events() {
        let event = json!({
            "metadata": {"name": "web.17a", "namespace": "demo", "creationTimestamp": "2024-05-01T11:50:00Z"},
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "type": "Warning", "reason": "BackOff", "message": "Back-off restarting\n",
            "count": 4, "firstTimestamp": "2024-05-01T11:50:00Z", "lastTimestamp": "2024-05-01T11:59:30Z"
        });
        let printer = Printer { info: lookup("ev"), wide: false, all_namespaces: false, now: now() };
        assert_eq!(printer.header(), ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
        assert_eq!(
            printer.row(&event),
            ["30s (x4 over 10m)", "Warning", "BackOff", "pod/web-1", "Back-off restarting"]
        );
    }

    #[test]
    fn lists_wrap_items_in_a_kind_list() {
        let list = list_object(lookup("deploy"), vec![json!({"kind": "Deployment"})], "42");
        assert_eq!(
            list,
            json!({"apiVersion": "v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "42"},
                   "items": [{"kind": "Deployment"}]})
        );
    }
}
