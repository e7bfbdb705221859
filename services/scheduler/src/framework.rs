//! The plugin interface: filters decide whether a pod may run on a node,
//! scores rank the nodes that passed. Each plugin is small and sees only the
//! pod (with what was computed from it once per cycle) and one node's
//! cached state, so it can be unit-tested with in-memory objects.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Toleration};

use crate::cache::NodeInfo;
use crate::resources::{self, Resources};

/// The best score a plugin gives a node; scores run 0..=MAX_NODE_SCORE.
pub const MAX_NODE_SCORE: i64 = 100;

/// A pod being scheduled, with what the plugins need computed once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// "namespace/name".
    pub key: String,
    pub uid: String,
    pub requests: Resources,
    /// CPU and memory for scoring, with defaults for containers that ask
    /// for nothing.
    pub non_zero: (i128, i128),
    /// The uid of the controller that owns it (a ReplicaSet, a Job), for
    /// spreading its siblings.
    pub owner: Option<String>,
    /// What its PersistentVolumeClaims ask of the node (filled in by the
    /// scheduling cycle, which has the claim caches).
    pub volumes: crate::volumes::VolumeNeeds,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> Self {
        let meta = &pod.metadata;
        let key =
            skiff_api::meta::object_key(meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""));
        let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.clone());
        Self {
            key,
            uid: meta.uid.clone().unwrap_or_default(),
            requests: resources::pod_requests(&pod),
            non_zero: resources::non_zero_requests(&pod),
            owner,
            pod,
            volumes: Default::default(),
        }
    }

    pub fn spec(&self) -> Option<&PodSpec> {
        self.pod.spec.as_ref()
    }

    pub fn tolerations(&self) -> &[Toleration] {
        self.spec().and_then(|s| s.tolerations.as_deref()).unwrap_or_default()
    }
}

/// Why a node cannot take a pod: one or more reasons as they appear in the
/// pod's `0/N nodes are available: ...` message ("Insufficient cpu").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub reasons: Vec<String>,
}

impl Unfit {
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reasons: vec![reason.into()] }
    }
}

/// Decides whether `pod` may run on `node`.
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit>;
}

/// Ranks a node that passed every filter. Raw scores of all candidate nodes
/// go through [`normalize`](Score::normalize) before the weighted sum, so a
/// plugin may return counts and turn them into 0..=MAX_NODE_SCORE there.
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    fn weight(&self) -> i64;
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64;
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// The plugins one scheduler runs, in order.
pub struct Framework {
    pub filters: Vec<Box<dyn Filter>>,
    pub scores: Vec<Box<dyn Score>>,
}

impl Framework {
    /// The first filter that rejects the node, if any.
    pub fn run_filters(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        self.filters.iter().try_for_each(|f| f.filter(pod, node))
    }
}

impl Default for Framework {
    /// The default plugin set, cheapest filters first so most rejections
    /// cost little. Weights follow kube-scheduler's defaults.
    fn default() -> Self {
        use crate::plugins::*;
        Self {
            filters: vec![
                Box::new(NodeReady),
                Box::new(NodeUnschedulable),
                Box::new(NodeAffinity),
                Box::new(TaintToleration),
                Box::new(NodeResourcesFit),
                Box::new(VolumeBinding),
            ],
            scores: vec![
                Box::new(LeastAllocated { weight: 1 }),
                Box::new(PreferredNodeAffinity { weight: 2 }),
                Box::new(OwnerSpread { weight: 2 }),
                Box::new(PreferNoScheduleTaints { weight: 3 }),
            ],
        }
    }
}
