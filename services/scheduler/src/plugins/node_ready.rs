//! Nodes that are not Ready, or cordoned, take no new pods.

use crate::cache::NodeInfo;
use crate::framework::{Filter, PodInfo, Unfit};
use crate::plugins::tolerates;
use skiff_api::well_known::UNSCHEDULABLE_TAINT;

/// The node's Ready condition must be True.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        let ready = node
            .node
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready {
            Ok(())
        } else {
            Err(Unfit::new("node(s) were not ready"))
        }
    }
}

/// `spec.unschedulable` (a cordon) keeps pods off unless they tolerate
/// `node.kubernetes.io/unschedulable:NoSchedule`, as DaemonSet pods do.
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        let cordoned = node.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.unschedulable).unwrap_or(false);
        if !cordoned {
            return Ok(());
        }
        let taint = k8s_openapi::api::core::v1::Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if pod.tolerations().iter().any(|t| tolerates(t, &taint)) {
            Ok(())
        } else {
            Err(Unfit::new("node(s) were unschedulable"))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugins::testing::{node, plain_node, pod};

    #[test]
    fn not_ready_nodes_are_rejected() {
        let mut n = plain_node("a");
        assert!(NodeReady.filter(&pod(json!({}), json!({})), &n).is_ok());
        let mut obj = (**n.node.as_ref().unwrap()).clone();
        obj.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
        n = crate::cache::NodeInfo::new(std::sync::Arc::new(obj));
        assert_eq!(NodeReady.filter(&pod(json!({}), json!({})), &n), Err(Unfit::new("node(s) were not ready")));
    }

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let n = node("a", json!({}), json!({"unschedulable": true}), json!({"cpu": "1"}));
        assert!(NodeUnschedulable.filter(&pod(json!({}), json!({})), &n).is_err());
        let tolerant = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
            json!({}),
        );
        assert!(NodeUnschedulable.filter(&tolerant, &n).is_ok());
    }
}
