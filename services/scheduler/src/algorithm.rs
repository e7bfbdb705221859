//! One scheduling decision: walk the nodes from a rotating start, keep the
//! first enough feasible ones, score them, pick the best. Pure over the
//! cache, so it is tested without an apiserver.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;

use crate::cache::Cache;
use crate::framework::{Framework, PodInfo};

/// Below this many nodes every node is evaluated (kube-scheduler's
/// minFeasibleNodesToFind).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive percentage never goes below this.
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// How many feasible nodes to find before scoring, out of `total`.
/// `percentage` 0 means adaptive: 50% less 1% per 125 nodes, at least 5%,
/// as kube-scheduler's percentageOfNodesToScore default does; 100 means all.
pub fn num_feasible_nodes_to_find(percentage: u32, total: usize) -> usize {
    if total < MIN_FEASIBLE_NODES_TO_FIND || percentage >= 100 {
        return total;
    }
    let pct = if percentage == 0 {
        50usize.saturating_sub(total / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE)
    } else {
        percentage as usize
    };
    (total * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND).min(total)
}

/// No node can take the pod: how many nodes there were and how many
/// rejected it for each reason. Displays as the pod's condition message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    /// `0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {k: v}.`
    /// Most common reason first, ties alphabetically.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return write!(f, "0/0 nodes are available: no nodes are registered.");
        }
        let mut reasons: Vec<(&String, &usize)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        write!(f, "0/{} nodes are available: {}.", self.num_nodes, list.join(", "))
    }
}

/// Chooses nodes; remembers where the last walk stopped so successive pods
/// look at different nodes first.
#[derive(Debug, Default)]
pub struct Algorithm {
    next_start: usize,
    /// Percentage of nodes to score (0 = adaptive).
    pub percentage_of_nodes_to_score: u32,
}

impl Algorithm {
    pub fn new(percentage_of_nodes_to_score: u32) -> Self {
        Self { next_start: 0, percentage_of_nodes_to_score }
    }

    /// The best node for `pod`, or why there is none.
    pub fn schedule(&mut self, framework: &Framework, pod: &PodInfo, cache: &Cache) -> Result<String, FitError> {
        let total = cache.node_count();
        let mut reasons = BTreeMap::new();
        if total == 0 {
            return Err(FitError { num_nodes: 0, reasons });
        }
        let want = num_feasible_nodes_to_find(self.percentage_of_nodes_to_score, total);
        let start = self.next_start % total;
        let mut feasible = Vec::with_capacity(want.min(total));
        let mut processed = 0;
        for i in 0..total {
            let idx = (start + i) % total;
            processed += 1;
            match framework.run_filters(pod, cache.node_at(idx)) {
                Ok(()) => {
                    feasible.push(idx);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(unfit) => {
                    for r in unfit.reasons {
                        *reasons.entry(r).or_insert(0) += 1;
                    }
                }
            }
        }
        self.next_start = (start + processed) % total;
        match feasible.len() {
            0 => return Err(FitError { num_nodes: total, reasons }),
            1 => return Ok(cache.node_at(feasible[0]).name.clone()),
            _ => {}
        }

        let mut totals = vec![0i64; feasible.len()];
        let mut scores = vec![0i64; feasible.len()];
        for plugin in &framework.scores {
            for (s, &idx) in scores.iter_mut().zip(&feasible) {
                *s = plugin.score(pod, cache.node_at(idx));
            }
            plugin.normalize(&mut scores);
            for (t, s) in totals.iter_mut().zip(&scores) {
                *t += s * plugin.weight();
            }
        }
        // Ties are broken at random (reservoir sampling), so equal nodes
        // share the load instead of the first one taking it all.
        let mut rng = rand::rng();
        let mut best = 0;
        let mut ties = 1;
        for i in 1..totals.len() {
            if totals[i] > totals[best] {
                best = i;
                ties = 1;
            } else if totals[i] == totals[best] {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        Ok(cache.node_at(feasible[best]).name.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> Arc<k8s_openapi::api::core::v1::Node> {
        let mut n = json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        if let Some(spec) = extra.get("spec") {
            n["spec"] = spec.clone();
        }
        Arc::new(serde_json::from_value(n).unwrap())
    }

    fn pod(cpu: &str) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn message_lists_reasons_most_common_first() {
        let err = FitError {
            num_nodes: 3,
            reasons: [
                ("node(s) had untolerated taint {key: value}".to_string(), 1),
                ("Insufficient cpu".to_string(), 2),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {key: value}."
        );
        assert_eq!(
            FitError { num_nodes: 0, reasons: BTreeMap::new() }.to_string(),
            "0/0 nodes are available: no nodes are registered."
        );
    }

    #[test]
    fn picks_only_fitting_nodes_and_explains_failure() {
        let fw = Framework::default();
        let mut cache = Cache::new();
        cache.set_node(node("small-1", "1", json!({})));
        cache.set_node(node("small-2", "1", json!({})));
        cache.set_node(node(
            "tainted",
            "16",
            json!({"spec": {"taints": [{"key": "key", "value": "value", "effect": "NoSchedule"}]}}),
        ));
        cache.set_node(node("big", "8", json!({})));
        let mut alg = Algorithm::new(0);
        for _ in 0..10 {
            assert_eq!(alg.schedule(&fw, &pod("2"), &cache), Ok("big".to_string()));
        }
        let err = alg.schedule(&fw, &pod("10"), &cache).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/4 nodes are available: 3 Insufficient cpu, 1 node(s) had untolerated taint {key: value}."
        );
    }

    #[test]
    fn assumed_pods_spread_load() {
        let fw = Framework::default();
        let mut cache = Cache::new();
        cache.set_node(node("a", "4", json!({})));
        cache.set_node(node("b", "4", json!({})));
        let mut alg = Algorithm::new(0);
        let mut placed = BTreeMap::new();
        for i in 0..8 {
            let mut p = pod("1");
            p.key = format!("ns/p{i}");
            let n = alg.schedule(&fw, &p, &cache).unwrap();
            cache.assume(&p, &n);
            *placed.entry(n).or_insert(0) += 1;
        }
        assert_eq!(placed, [("a".to_string(), 4), ("b".to_string(), 4)].into_iter().collect());
        assert!(alg.schedule(&fw, &pod("1"), &cache).is_err());
    }

    #[test]
    fn feasible_node_count_follows_kube_scheduler() {
        assert_eq!(num_feasible_nodes_to_find(0, 50), 50);
        assert_eq!(num_feasible_nodes_to_find(0, 1000), 420);
        assert_eq!(num_feasible_nodes_to_find(0, 5000), 500);
        assert_eq!(num_feasible_nodes_to_find(0, 20000), 1000);
        assert_eq!(num_feasible_nodes_to_find(20, 5000), 1000);
        assert_eq!(num_feasible_nodes_to_find(1, 5000), 100);
        assert_eq!(num_feasible_nodes_to_find(100, 5000), 5000);
    }

    #[test]
    fn walks_start_where_the_last_one_stopped() {
        let fw = Framework::default();
        let mut cache = Cache::new();
        for i in 0..400 {
            cache.set_node(node(&format!("n{i:03}"), "4", json!({})));
        }
        // 400 nodes, adaptive: 47% → 188 nodes per walk.
        let mut alg = Algorithm::new(0);
        alg.schedule(&fw, &pod("1"), &cache).unwrap();
        assert_eq!(alg.next_start, 188);
        alg.schedule(&fw, &pod("1"), &cache).unwrap();
        assert_eq!(alg.next_start, 376);
    }
}
