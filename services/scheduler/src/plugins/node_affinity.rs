//! `spec.nodeSelector` and node affinity: the required terms filter, the
//! preferred terms score.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAffinity as K8sNodeAffinity, NodeSelectorTerm};

use crate::cache::NodeInfo;
use crate::framework::{Filter, PodInfo, Score, Unfit, MAX_NODE_SCORE};

fn node_affinity(pod: &PodInfo) -> Option<&K8sNodeAffinity> {
    pod.spec().and_then(|s| s.affinity.as_ref()).and_then(|a| a.node_affinity.as_ref())
}

fn labels(node: &NodeInfo) -> Option<&BTreeMap<String, String>> {
    node.node.as_ref().and_then(|n| n.metadata.labels.as_ref())
}

/// A term matches when all its expressions and fields do.
pub(crate) fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    skiff_api::scheduling::term_matches(term, labels(node), &node.name)
}

/// Requires the node's labels to match `spec.nodeSelector` and at least one
/// of the required node affinity terms.
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        let unfit = || Err(Unfit::new("node(s) didn't match Pod's node affinity/selector"));
        if let Some(selector) = pod.spec().and_then(|s| s.node_selector.as_ref()) {
            let node_labels = labels(node);
            if !selector.iter().all(|(k, v)| node_labels.and_then(|l| l.get(k)) == Some(v)) {
                return unfit();
            }
        }
        let required = node_affinity(pod).and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
        if let Some(required) = required {
            if !required.node_selector_terms.iter().any(|t| term_matches(t, node)) {
                return unfit();
            }
        }
        Ok(())
    }
}

/// Sums the weights of the preferred terms a node matches, scaled so the
/// best node scores MAX_NODE_SCORE.
pub struct PreferredNodeAffinity {
    pub weight: i64,
}

impl Score for PreferredNodeAffinity {
    fn name(&self) -> &'static str {
        "PreferredNodeAffinity"
    }

    fn weight(&self) -> i64 {
        self.weight
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        node_affinity(pod)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|p| p.weight != 0 && term_matches(&p.preference, node))
            .map(|p| i64::from(p.weight))
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        if max > 0 {
            for s in scores.iter_mut() {
                *s = MAX_NODE_SCORE * *s / max;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::plugins::testing::{node, pod};

    fn labelled(labels: Value) -> NodeInfo {
        node("n1", labels, json!({}), json!({}))
    }

    fn required(exprs: Value) -> PodInfo {
        pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": exprs}]
            }}}}),
            json!({}),
        )
    }

    #[test]
    fn node_selector_needs_every_label() {
        let p = pod(json!({"nodeSelector": {"zone": "a", "disk": "ssd"}}), json!({}));
        assert!(NodeAffinity.filter(&p, &labelled(json!({"zone": "a", "disk": "ssd", "x": "y"}))).is_ok());
        assert_eq!(
            NodeAffinity.filter(&p, &labelled(json!({"zone": "a"}))),
            Err(Unfit::new("node(s) didn't match Pod's node affinity/selector"))
        );
    }

    #[test]
    fn required_affinity_operators() {
        let n = labelled(json!({"zone": "b", "cores": "16"}));
        let cases = [
            (json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}]), true),
            (json!([{"key": "zone", "operator": "In", "values": ["a"]}]), false),
            (json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]), true),
            (json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}]), false),
            (json!([{"key": "missing", "operator": "NotIn", "values": ["b"]}]), true),
            (json!([{"key": "zone", "operator": "Exists"}]), true),
            (json!([{"key": "gpu", "operator": "Exists"}]), false),
            (json!([{"key": "gpu", "operator": "DoesNotExist"}]), true),
            (json!([{"key": "cores", "operator": "Gt", "values": ["8"]}]), true),
            (json!([{"key": "cores", "operator": "Lt", "values": ["8"]}]), false),
            (json!([{"key": "zone", "operator": "Gt", "values": ["8"]}]), false),
            (
                json!([{"key": "zone", "operator": "Exists"}, {"key": "cores", "operator": "Lt", "values": ["32"]}]),
                true,
            ),
        ];
        for (exprs, want) in cases {
            assert_eq!(NodeAffinity.filter(&required(exprs.clone()), &n).is_ok(), want, "{exprs}");
        }
    }

    #[test]
    fn terms_are_ored_and_match_fields_names_the_node() {
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
                ]
            }}}}),
            json!({}),
        );
        assert!(NodeAffinity.filter(&p, &labelled(json!({}))).is_ok());
        assert!(NodeAffinity.filter(&p, &node("n2", json!({}), json!({}), json!({}))).is_err());
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
            ]}}}),
            json!({}),
        );
        let plugin = PreferredNodeAffinity { weight: 2 };
        let mut scores: Vec<i64> = [json!({"zone": "a"}), json!({"zone": "a", "disk": "ssd"}), json!({})]
            .into_iter()
            .map(|l| plugin.score(&p, &labelled(l)))
            .collect();
        assert_eq!(scores, vec![10, 40, 0]);
        plugin.normalize(&mut scores);
        assert_eq!(scores, vec![25, 100, 0]);
    }
}
