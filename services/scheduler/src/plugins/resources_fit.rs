//! Whether a node has room for a pod's requests, and a preference for the
//! emptiest nodes.

use crate::cache::NodeInfo;
use crate::framework::{Filter, PodInfo, Score, Unfit, MAX_NODE_SCORE};

/// Rejects a node whose free allocatable (allocatable minus the requests
/// of its pods) is short of any resource the pod requests, or that already
/// holds as many pods as it allows. Reports every resource that is short.
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        let mut reasons = Vec::new();
        if node.pod_count as i64 + 1 > node.allowed_pods {
            reasons.push("Too many pods".to_string());
        }
        for (name, want) in pod.requests.non_zero() {
            if want > 0 && node.requested.get(name).saturating_add(want) > node.allocatable.get(name) {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Unfit { reasons })
        }
    }
}

/// Prefers nodes with the most CPU and memory left after placing the pod
/// (kube-scheduler's LeastAllocated strategy), which spreads load.
pub struct LeastAllocated {
    pub weight: i64,
}

fn free_share(allocatable: i128, requested: i128) -> i64 {
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    let max = i128::from(MAX_NODE_SCORE);
    // Both scaled down first where `free * max` would pass i128's range.
    let scale = allocatable / (i128::MAX / max) + 1;
    let free = (allocatable - requested.max(0)) / scale;
    (free * max / (allocatable / scale)) as i64
}

impl Score for LeastAllocated {
    fn name(&self) -> &'static str {
        "LeastAllocated"
    }

    fn weight(&self) -> i64 {
        self.weight
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let cpu = free_share(node.allocatable.cpu, node.non_zero_requested.0.saturating_add(pod.non_zero.0));
        let memory = free_share(node.allocatable.memory, node.non_zero_requested.1.saturating_add(pod.non_zero.1));
        (cpu + memory) / 2
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::testing::{node, plain_node, pod};

    #[test]
    fn reports_each_short_resource() {
        let mut n = plain_node("a");
        let used = pod(json!({}), json!({"cpu": "3", "memory": "1Gi"}));
        n.add_pod(&used.requests, used.non_zero, None);
        assert!(NodeResourcesFit.filter(&pod(json!({}), json!({"cpu": "1"})), &n).is_ok());
        assert_eq!(
            NodeResourcesFit.filter(&pod(json!({}), json!({"cpu": "1500m", "memory": "8Gi"})), &n),
            Err(Unfit { reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()] })
        );
    }

    #[test]
    fn extended_resources_need_the_node_to_offer_them() {
        let gpu = node("g", json!({}), json!({}), json!({"cpu": "4", "nvidia.com/gpu": "1"}));
        let plain = plain_node("p");
        let wants_gpu = pod(json!({}), json!({"nvidia.com/gpu": "1"}));
        assert!(NodeResourcesFit.filter(&wants_gpu, &gpu).is_ok());
        assert_eq!(NodeResourcesFit.filter(&wants_gpu, &plain), Err(Unfit::new("Insufficient nvidia.com/gpu")));
    }

    #[test]
    fn pod_count_is_limited() {
        let mut n = node("a", json!({}), json!({}), json!({"cpu": "4", "pods": "1"}));
        n.add_pod(&Default::default(), (0, 0), None);
        assert_eq!(NodeResourcesFit.filter(&pod(json!({}), json!({})), &n), Err(Unfit::new("Too many pods")));
    }

    #[test]
    fn huge_requests_neither_panic_nor_wrap() {
        // About i128::MAX thousandths, each.
        let huge = "170141183460469231731687e12";
        let mut n = node("a", json!({}), json!({}), json!({"cpu": huge, "memory": huge}));
        let p = pod(json!({}), json!({"cpu": huge, "memory": huge}));
        assert!(NodeResourcesFit.filter(&p, &n).is_ok());
        let nearly_empty = LeastAllocated { weight: 1 }.score(&pod(json!({}), json!({})), &n);
        assert!((99..=100).contains(&nearly_empty), "{nearly_empty}");
        n.add_pod(&p.requests, p.non_zero, None);
        n.add_pod(&p.requests, p.non_zero, None);
        assert_eq!(
            NodeResourcesFit.filter(&p, &n),
            Err(Unfit { reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()] })
        );
        assert_eq!(LeastAllocated { weight: 1 }.score(&p, &n), 0);
    }

    #[test]
    fn emptier_nodes_score_higher() {
        let empty = plain_node("a");
        let mut busy = plain_node("b");
        let used = pod(json!({}), json!({"cpu": "2", "memory": "4Gi"}));
        busy.add_pod(&used.requests, used.non_zero, None);
        let p = pod(json!({}), json!({"cpu": "1", "memory": "2Gi"}));
        let plugin = LeastAllocated { weight: 1 };
        // cpu 3/4 free, memory 6/8 free → 75; busy: 1/4, 2/8 → 25.
        assert_eq!(plugin.score(&p, &empty), 75);
        assert_eq!(plugin.score(&p, &busy), 25);
    }
}
