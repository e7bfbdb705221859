//! Resource arithmetic: what a pod requests and what a node offers, in the
//! thousandths that `skiff_api::quantity::parse_milli` yields (so CPU
//! millicores and memory bytes are both exact).

use k8s_openapi::api::core::v1::{Node, Pod};

use skiff_api::resources::container_requests;
pub use skiff_api::resources::{pod_requests, Resources, CPU, EPHEMERAL_STORAGE, MEMORY, PODS};

/// What a node offers pods when its status names no pod count (the
/// kubelet's default `--max-pods`).
pub const DEFAULT_MAX_PODS: i64 = 110;

/// For scoring only, a container that requests nothing counts as this much,
/// as in kube-scheduler: otherwise every best-effort pod would look free
/// and pile onto one node.
pub const DEFAULT_MILLI_CPU_REQUEST: i128 = 100;
pub const DEFAULT_MEMORY_REQUEST: i128 = 200 * 1024 * 1024 * 1000;

/// CPU and memory for scoring: each container's request, or the default
/// when it requests none.
pub fn non_zero_requests(pod: &Pod) -> (i128, i128) {
    let Some(spec) = &pod.spec else { return (0, 0) };
    spec.containers.iter().fold((0, 0), |(cpu, mem), c| {
        let r = container_requests(c);
        let c_cpu = if r.cpu == 0 { DEFAULT_MILLI_CPU_REQUEST } else { r.cpu };
        let c_mem = if r.memory == 0 { DEFAULT_MEMORY_REQUEST } else { r.memory };
        (cpu.saturating_add(c_cpu), mem.saturating_add(c_mem))
    })
}

/// What a node offers: `status.allocatable`, else `status.capacity`, and
/// how many pods it takes.
pub fn node_allocatable(node: &Node) -> (Resources, i64) {
    let status = node.status.as_ref();
    let list = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let Some(list) = list else { return (Resources::default(), DEFAULT_MAX_PODS) };
    let pods = list
        .get(PODS)
        .and_then(|q| skiff_api::quantity::parse_milli(&q.0).ok())
        .map(|m| i64::try_from(m / 1000).unwrap_or(i64::MAX))
        .unwrap_or(DEFAULT_MAX_PODS);
    (Resources::from_list(list), pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn sums_of_huge_requests_saturate() {
        // i128::MAX is 170141183460469231731687303715884105727 thousandths.
        let huge = "170141183460469231731687e12";
        let p = pod(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": huge, "example.com/x": huge}}},
            {"name": "b", "resources": {"requests": {"cpu": huge, "example.com/x": huge}}},
        ]}));
        let r = pod_requests(&p);
        assert_eq!(r.cpu, i128::MAX);
        assert_eq!(r.get("example.com/x"), i128::MAX);
        assert_eq!(non_zero_requests(&p).0, i128::MAX);
        let mut free = Resources::default();
        free.sub(&r);
        free.sub(&r);
        assert_eq!(free.cpu, i128::MIN);
    }

    #[test]
    fn limits_stand_in_for_missing_requests_and_overhead_adds() {
        let p = pod(json!({
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"memory": "100Mi"}}}],
            "overhead": {"cpu": "10m"},
        }));
        let r = pod_requests(&p);
        assert_eq!(r.cpu, 510);
        assert_eq!(r.memory, 100 * 1024 * 1024 * 1000);
        assert_eq!(non_zero_requests(&pod(json!({"containers": [{"name": "a"}]}))).0, DEFAULT_MILLI_CPU_REQUEST);
    }

    #[test]
    fn allocatable_falls_back_to_capacity_and_110_pods() {
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "4"}}})).unwrap();
        let (r, pods) = node_allocatable(&n);
        assert_eq!((r.cpu, pods), (4000, DEFAULT_MAX_PODS));
    }
}
