//! Spreads the pods of one controller (a ReplicaSet's replicas) across
//! nodes, so losing a node loses few of them.

use crate::cache::NodeInfo;
use crate::framework::{PodInfo, Score};
use crate::plugins::taints::reverse_normalize;

/// Prefers nodes with fewer pods of the same controller owner.
pub struct OwnerSpread {
    pub weight: i64,
}

impl Score for OwnerSpread {
    fn name(&self) -> &'static str {
        "OwnerSpread"
    }

    fn weight(&self) -> i64 {
        self.weight
    }

    /// The number of siblings on the node; `normalize` makes fewer better.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.owner.as_ref().and_then(|o| node.owners.get(o)).copied().map_or(0, i64::from)
    }

    fn normalize(&self, scores: &mut [i64]) {
        reverse_normalize(scores);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::framework::PodInfo;
    use crate::plugins::testing::plain_node;

    #[test]
    fn nodes_with_more_siblings_score_lower() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}
            ]},
            "spec": {"containers": [{"name": "c"}]},
        }))
        .unwrap();
        let p = PodInfo::new(Arc::new(pod));
        let mut crowded = plain_node("a");
        crowded.add_pod(&Default::default(), (0, 0), Some("rs-uid"));
        crowded.add_pod(&Default::default(), (0, 0), Some("rs-uid"));
        let mut half = plain_node("b");
        half.add_pod(&Default::default(), (0, 0), Some("rs-uid"));
        let mut other = plain_node("c");
        other.add_pod(&Default::default(), (0, 0), Some("another"));
        let plugin = OwnerSpread { weight: 1 };
        let mut scores: Vec<i64> = [&crowded, &half, &other].iter().map(|n| plugin.score(&p, n)).collect();
        plugin.normalize(&mut scores);
        assert_eq!(scores, vec![0, 50, 100]);
    }
}
