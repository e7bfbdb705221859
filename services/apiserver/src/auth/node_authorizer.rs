//! The Node authorizer, as Kubernetes' (authorization mode `Node`, before
//! RBAC): a kubelet (`system:node:NAME` in `system:nodes`) may read a
//! Secret, ConfigMap or PersistentVolumeClaim when a pod bound to its node
//! names it, and then only by name: a get, or a list or watch of
//! `metadata.name=NAME`. The `system:node` role grants none of these, so
//! one node's credentials no longer open every Secret of the cluster.
//!
//! Which pods a node runs comes from this apiserver's Pod watch cache. A
//! pod bound a moment ago may not be in it yet: the kubelet's read is
//! refused then, and its retry succeeds once the cache has caught up.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use skiff_api::references::{uses, Referenced};
use skiff_api::KindInfo;

use super::node_restriction::node_of;
use super::rbac::Attributes;
use super::UserInfo;
use crate::cache::WatchCache;
use crate::registry::Registry;

pub struct NodeAuthorizer {
    pods: Arc<WatchCache>,
}

impl NodeAuthorizer {
    pub fn new(registry: &Registry) -> Self {
        Self { pods: registry.cache(KindInfo::by_kind("Pod").expect("pods are served")).clone() }
    }

    /// True when `user` is a kubelet reading by name what a pod bound to
    /// its node names; otherwise it has no opinion, and RBAC decides.
    pub fn allows(&self, user: &UserInfo, attributes: &Attributes<'_>) -> bool {
        let Some(node) = node_of(user) else { return false };
        let readable = attributes.api_group.is_empty()
            && attributes.subresource.is_empty()
            && matches!(attributes.verb, "get" | "list" | "watch")
            && !attributes.name.is_empty();
        let Some(kind) = Referenced::of_resource(attributes.resource).filter(|_| readable) else { return false };
        self.bound_pod_uses(node, attributes.namespace, kind, attributes.name)
    }

    fn bound_pod_uses(&self, node: &str, namespace: &str, kind: Referenced, name: &str) -> bool {
        let (pods, _) = self.pods.objects(&self.pods.info.key_prefix(Some(namespace)));
        pods.iter()
            .filter(|pod| pod.field("spec.nodeName") == Some(node))
            .filter_map(|pod| serde_json::from_slice::<Pod>(&pod.json).ok())
            .any(|pod| uses(&pod, kind, name))
    }
}
