//! The default plugins: one concern per file.

mod node_affinity;
mod node_ready;
mod owner_spread;
mod resources_fit;
mod taints;
mod volume_binding;

pub use node_affinity::{NodeAffinity, PreferredNodeAffinity};
pub use node_ready::{NodeReady, NodeUnschedulable};
pub use owner_spread::OwnerSpread;
pub use resources_fit::{LeastAllocated, NodeResourcesFit};
pub use taints::{tolerates, PreferNoScheduleTaints, TaintToleration};
pub use volume_binding::VolumeBinding;

#[cfg(test)]
pub(crate) mod testing {
    //! In-memory nodes and pods for the plugin tests.
    use std::sync::Arc;

    use serde_json::{json, Value};

    use crate::cache::NodeInfo;
    use crate::framework::PodInfo;

    pub fn node(name: &str, labels: Value, spec: Value, allocatable: Value) -> NodeInfo {
        NodeInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "spec": spec,
                "status": {
                    "allocatable": allocatable,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }))
            .expect("test node"),
        ))
    }

    pub fn plain_node(name: &str) -> NodeInfo {
        node(name, json!({}), json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
    }

    /// A pod whose spec is `spec` plus one container requesting `requests`.
    pub fn pod(spec: Value, requests: Value) -> PodInfo {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "x", "resources": {"requests": requests}}]);
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": spec}))
                .expect("test pod"),
        ))
    }
}
