//! Node IPAM, after Kubernetes' range allocator: every Node gets a subnet
//! of `--cluster-cidr` (a `/--node-cidr-mask-size`, /24 by default) as
//! spec.podCIDR and spec.podCIDRs, the pod network its kubelet and overlay
//! hand out addresses from.
//!
//! A node that already has a podCIDR (a kubelet started with `--pod-cidr`)
//! keeps it and its subnet counts as taken; a deleted node's subnet is free
//! again. What is taken is read from the Node cache, plus the subnets this
//! controller patched that the cache does not show yet ([`Assigned`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use skiff_api::cidr::Cidr;
use skiff_client::{Action, Client, EventRecorder, EventType, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;

/// How long a node waits before looking again when every subnet is taken.
const FULL_RETRY: Duration = Duration::from_secs(30);

pub struct NodeIpamController {
    client: Client,
    nodes: Store<Node>,
    ranges: Ranges,
    assigned: Mutex<Assigned>,
    recorder: EventRecorder,
}

/// The pod network and the size of each node's share of it.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub cluster_cidr: Cidr,
    pub node_mask: u8,
}

/// Subnets this controller gave out, by node name, until the node is gone.
#[derive(Debug, Default)]
struct Assigned(BTreeMap<String, u64>);

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.nodes, move |ev| queue.add(ev.key()));
    }
    let controller = NodeIpamController {
        client: ctx.client.clone(),
        nodes: ctx.caches.nodes.clone(),
        ranges: ctx.node_ipam,
        assigned: Mutex::new(Assigned::default()),
        recorder: EventRecorder::new(ctx.client.clone(), "node-ipam-controller"),
    };
    w.run(ctx, controller, queue);
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec.as_ref()?.pod_cidr.as_deref().filter(|c| !c.is_empty())
}

/// The first subnet index not in `taken`, if any is left.
pub fn first_free(ranges: &Ranges, taken: &HashSet<u64>) -> Option<u64> {
    let count = 1u64 << ranges.node_mask.saturating_sub(ranges.cluster_cidr.prefix()).min(32);
    (0..count).find(|i| !taken.contains(i))
}

impl NodeIpamController {
    fn assigned(&self) -> std::sync::MutexGuard<'_, Assigned> {
        self.assigned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subnets held by nodes in the cache and by our patches not seen yet.
    fn taken(&self) -> HashSet<u64> {
        // A deleted node's subnet is free as soon as the cache drops it.
        let mut taken: HashSet<u64> =
            self.assigned().0.iter().filter(|(n, _)| self.nodes.get(n).is_some()).map(|(_, i)| *i).collect();
        for node in self.nodes.list() {
            let index = pod_cidr(&node)
                .and_then(|c| c.parse::<Cidr>().ok())
                .and_then(|c| self.ranges.cluster_cidr.subnet_index(self.ranges.node_mask, &c));
            taken.extend(index);
        }
        taken
    }
}

impl Reconcile for NodeIpamController {
    const NAME: &'static str = "nodeipam";
    type Error = Error;

    async fn reconcile(&self, name: &str) -> Result<Action> {
        let Some(node) = self.nodes.get(name) else {
            // Gone: its subnet is free (the cache no longer shows it either).
            self.assigned().0.remove(name);
            return Ok(Action::done());
        };
        if let Some(existing) = pod_cidr(&node) {
            // Set (by us or its kubelet): it keeps it. Ours is visible now.
            if !existing
                .parse::<Cidr>()
                .is_ok_and(|c| self.ranges.cluster_cidr.subnet_index(self.ranges.node_mask, &c).is_some())
            {
                tracing::debug!(node = %name, pod_cidr = %existing, "node's podCIDR is outside --cluster-cidr; kept");
            }
            return Ok(Action::done());
        }
        // Patched earlier but the cache does not show it yet: same subnet again.
        let mine = self.assigned().0.get(name).copied();
        let index = match mine {
            Some(i) => i,
            None => {
                let Some(i) = first_free(&self.ranges, &self.taken()) else {
                    tracing::warn!(node = %name, cidr = %self.ranges.cluster_cidr, "no pod CIDR left for node");
                    let msg = format!("no free /{} left in {}", self.ranges.node_mask, self.ranges.cluster_cidr);
                    self.recorder.report(node.as_ref(), EventType::Warning, "CIDRNotAvailable", &msg).await;
                    return Ok(Action::requeue(FULL_RETRY));
                };
                self.assigned().0.insert(name.to_string(), i);
                i
            }
        };
        let cidr = self.ranges.cluster_cidr.subnet(self.ranges.node_mask, index).expect("index below the subnet count");
        let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
        match self.client.api::<Node>("").patch(name, &patch).await {
            Ok(_) => {
                tracing::info!(node = %name, pod_cidr = %cidr, "pod CIDR assigned");
                Ok(Action::done())
            }
            Err(e) if e.is_not_found() => {
                self.assigned().0.remove(name);
                Ok(Action::done())
            }
            Err(source) => Err(Error::Patch { kind: "Node", key: util::name(&node.metadata).into(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_free_skips_taken_and_ends() {
        let ranges = Ranges { cluster_cidr: "10.42.0.0/16".parse().unwrap(), node_mask: 24 };
        assert_eq!(first_free(&ranges, &HashSet::new()), Some(0));
        assert_eq!(first_free(&ranges, &HashSet::from([0, 1, 3])), Some(2));
        assert_eq!(first_free(&ranges, &(0..256).collect()), None);
        let small = Ranges { cluster_cidr: "10.42.0.0/23".parse().unwrap(), node_mask: 24 };
        assert_eq!(first_free(&small, &HashSet::from([0])), Some(1));
        assert_eq!(first_free(&small, &HashSet::from([0, 1])), None);
        assert_eq!(ranges.cluster_cidr.subnet(24, 5).unwrap().to_string(), "10.42.5.0/24");
    }
}
