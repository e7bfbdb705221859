//! Taints and tolerations: NoSchedule and NoExecute taints keep pods that
//! don't tolerate them off a node; PreferNoSchedule ones only lower its score.

use k8s_openapi::api::core::v1::Taint;

use crate::cache::NodeInfo;
use crate::framework::{Filter, PodInfo, Score, Unfit, MAX_NODE_SCORE};

pub use skiff_api::scheduling::tolerates;

fn taints(node: &NodeInfo) -> &[Taint] {
    node.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.taints.as_deref()).unwrap_or_default()
}

/// Rejects a node with a NoSchedule or NoExecute taint the pod does not tolerate.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        match skiff_api::scheduling::untolerated(taints(node), pod.tolerations()) {
            None => Ok(()),
            Some(t) => Err(Unfit::new(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ))),
        }
    }
}

/// Prefers nodes with fewer PreferNoSchedule taints the pod does not tolerate.
pub struct PreferNoScheduleTaints {
    pub weight: i64,
}

impl Score for PreferNoScheduleTaints {
    fn name(&self) -> &'static str {
        "PreferNoScheduleTaints"
    }

    fn weight(&self) -> i64 {
        self.weight
    }

    /// The count of untolerated PreferNoSchedule taints; `normalize` turns
    /// it around so fewer scores higher.
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        taints(node)
            .iter()
            .filter(|taint| {
                taint.effect == "PreferNoSchedule" && !pod.tolerations().iter().any(|t| tolerates(t, taint))
            })
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        reverse_normalize(scores);
    }
}

/// Maps counts to 0..=MAX_NODE_SCORE with the smallest count scoring
/// highest (all equal when every count is zero).
pub(crate) fn reverse_normalize(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max == 0 { MAX_NODE_SCORE } else { MAX_NODE_SCORE * (max - *s) / max };
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::testing::{node, pod};

    fn tainted(effect: &str) -> NodeInfo {
        node("t", json!({}), json!({"taints": [{"key": "dedicated", "value": "infra", "effect": effect}]}), json!({}))
    }

    #[test]
    fn untolerated_no_schedule_taint_rejects_with_its_key_and_value() {
        let p = pod(json!({}), json!({}));
        assert_eq!(
            TaintToleration.filter(&p, &tainted("NoSchedule")),
            Err(Unfit::new("node(s) had untolerated taint {dedicated: infra}"))
        );
        assert!(TaintToleration.filter(&p, &tainted("NoExecute")).is_err());
        assert!(TaintToleration.filter(&p, &tainted("PreferNoSchedule")).is_ok());
    }

    #[test]
    fn tolerations_match_by_key_value_effect_and_operator() {
        let n = tainted("NoSchedule");
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
        ] {
            assert!(
                TaintToleration.filter(&pod(json!({"tolerations": [tol.clone()]}), json!({})), &n).is_ok(),
                "{tol}"
            );
        }
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "other"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            json!({"key": "other", "operator": "Exists"}),
        ] {
            assert!(
                TaintToleration.filter(&pod(json!({"tolerations": [tol.clone()]}), json!({})), &n).is_err(),
                "{tol}"
            );
        }
    }

    #[test]
    fn prefer_no_schedule_lowers_the_score() {
        let plugin = PreferNoScheduleTaints { weight: 1 };
        let p = pod(json!({}), json!({}));
        let clean = node("c", json!({}), json!({}), json!({}));
        let mut scores = vec![plugin.score(&p, &tainted("PreferNoSchedule")), plugin.score(&p, &clean)];
        plugin.normalize(&mut scores);
        assert_eq!(scores, vec![0, MAX_NODE_SCORE]);
    }
}
