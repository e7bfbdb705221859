//! `metrics.k8s.io/v1beta1`, as metrics-server serves it, for `kubectl top`:
//! PodMetrics and NodeMetrics read from the kubelets on each request
//! (through [`PodProxyService`](crate::proxy::PodProxyService)), not kept.
//! CPU is the average over the time since the kubelet's previous sample of
//! it, memory the working set. Authorized as reading the pods (or nodes).

use serde_json::{json, Value};
use skiff_api::clock;
use skiff_api::proto::{CpuStats, MemoryStats, NodeStats, PodStats, StatsRequest};

use super::status::Failure;
use super::{json_reply, Call, Reply, Rest};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";

/// What a metrics path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Metrics {
    /// PodMetrics of a namespace's pods (every namespace for ""), or one.
    Pods { namespace: String, name: Option<String> },
    /// NodeMetrics of every node, or one.
    Nodes { name: Option<String> },
}

impl Metrics {
    /// The path after `/apis/metrics.k8s.io/v1beta1/`.
    pub fn of(rest: &[&str]) -> Option<Self> {
        let name = |n: &str| Some(n.to_string());
        Some(match rest {
            ["pods"] => Metrics::Pods { namespace: String::new(), name: None },
            ["namespaces", ns, "pods"] => Metrics::Pods { namespace: ns.to_string(), name: None },
            ["namespaces", ns, "pods", pod] => Metrics::Pods { namespace: ns.to_string(), name: name(pod) },
            ["nodes"] => Metrics::Nodes { name: None },
            ["nodes", node] => Metrics::Nodes { name: name(node) },
            _ => return None,
        })
    }
}

/// The discovery document of the group version.
pub fn resources() -> Value {
    let resource = |name: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]});
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": [resource("nodes", "NodeMetrics", false), resource("pods", "PodMetrics", true)]})
}

impl Rest {
    pub(super) async fn metrics(&self, call: &Call, what: Metrics) -> Reply {
        let failure = |s: tonic::Status| Failure::from_status(&s, None);
        let now = clock::now_rfc3339();
        let (items, one) = match what {
            Metrics::Pods { namespace, name } => {
                let request = StatsRequest { namespace, pod: name.clone().unwrap_or_default(), nodes: false };
                let pods = self.pods.pod_usage(&call.user, request).await.map_err(failure)?;
                (pods.iter().map(|p| pod_metrics(p, &now)).collect::<Vec<_>>(), name.map(|n| ("pods", n)))
            }
            Metrics::Nodes { name } => {
                let nodes =
                    self.pods.node_usage(&call.user, name.as_deref().unwrap_or_default()).await.map_err(failure)?;
                (nodes.iter().map(|n| node_metrics(n, &now)).collect(), name.map(|n| ("nodes", n)))
            }
        };
        let body = match one {
            Some((resource, name)) => items.into_iter().next().ok_or_else(|| {
                Failure::new(hyper::StatusCode::NOT_FOUND, "NotFound", format!("{resource}.{GROUP} {name:?} not found"))
            })?,
            None => {
                let kind = if items.first().is_some_and(|i| i["kind"] == "NodeMetrics") {
                    "NodeMetricsList"
                } else {
                    "PodMetricsList"
                };
                json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items})
            }
        };
        Ok(json_reply(hyper::StatusCode::OK, body.to_string(), "application/json"))
    }
}

fn usage(cpu: Option<&CpuStats>, memory: Option<&MemoryStats>) -> Value {
    let nano_cores = cpu.map_or(0, |c| c.usage_nano_cores);
    let bytes = memory.map_or(0, |m| m.working_set_bytes);
    json!({"cpu": format!("{nano_cores}n"), "memory": format!("{}Ki", bytes / 1024)})
}

fn pod_metrics(pod: &PodStats, now: &str) -> Value {
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": usage(c.cpu.as_ref(), c.memory.as_ref())}))
        .collect();
    json!({"kind": "PodMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": pod.name, "namespace": pod.namespace, "creationTimestamp": now},
        "timestamp": now, "window": "15s", "containers": containers})
}

fn node_metrics(node: &NodeStats, now: &str) -> Value {
    json!({"kind": "NodeMetrics", "apiVersion": API_VERSION,
        "metadata": {"name": node.name, "creationTimestamp": now},
        "timestamp": now, "window": "15s", "usage": usage(node.cpu.as_ref(), node.memory.as_ref())})
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::proto::ContainerStats;

    #[test]
    fn paths_name_pods_or_nodes() {
        assert_eq!(
            Metrics::of(&["namespaces", "ns", "pods"]),
            Some(Metrics::Pods { namespace: "ns".into(), name: None })
        );
        assert_eq!(Metrics::of(&["nodes", "n1"]), Some(Metrics::Nodes { name: Some("n1".into()) }));
        assert_eq!(Metrics::of(&["pods"]), Some(Metrics::Pods { namespace: String::new(), name: None }));
        assert_eq!(Metrics::of(&["widgets"]), None);
    }

    #[test]
    fn usage_is_in_nanocores_and_kibibytes() {
        let pod = PodStats {
            namespace: "ns".into(),
            name: "web".into(),
            containers: vec![ContainerStats {
                name: "c".into(),
                cpu: Some(CpuStats { usage_nano_cores: 12_000_000, ..Default::default() }),
                memory: Some(MemoryStats { working_set_bytes: 4 * 1024 * 1024, ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = pod_metrics(&pod, "2026-01-01T00:00:00Z");
        assert_eq!(m["containers"][0]["usage"], json!({"cpu": "12000000n", "memory": "4096Ki"}));
        assert_eq!(m["metadata"]["namespace"], "ns");
    }
}
