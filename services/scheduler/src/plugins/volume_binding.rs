//! A pod's claims must be usable on the node: see [`crate::volumes`].

use skiff_api::scheduling::volume_allows;

use crate::cache::NodeInfo;
use crate::framework::{Filter, PodInfo, Unfit};

pub struct VolumeBinding;

impl Filter for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        if let Some(problem) = &pod.volumes.problem {
            return Err(Unfit::new(problem.clone()));
        }
        let Some(n) = node.node.as_ref() else { return Ok(()) };
        let name = n.metadata.name.as_deref().unwrap_or_default();
        if pod.volumes.bound.iter().all(|pv| volume_allows(pv, n.metadata.labels.as_ref(), name)) {
            Ok(())
        } else {
            Err(Unfit::new("node(s) had volume node affinity conflict"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::plugins::testing::{plain_node, pod};

    #[test]
    fn a_bound_local_volume_pins_the_pod_to_its_node() {
        let pv = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "pv"}, "spec": {"nodeAffinity": {"required": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}}))
            .unwrap(),
        );
        let mut p = pod(json!({}), json!({}));
        p.volumes.bound.push(pv);
        assert!(VolumeBinding.filter(&p, &plain_node("a")).is_ok());
        let err = VolumeBinding.filter(&p, &plain_node("b")).unwrap_err();
        assert_eq!(err.reasons, ["node(s) had volume node affinity conflict"]);
        p.volumes.problem = Some("pod has unbound immediate PersistentVolumeClaims".into());
        assert!(VolumeBinding.filter(&p, &plain_node("a")).is_err());
    }
}
