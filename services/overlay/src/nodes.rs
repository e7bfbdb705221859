//! What the overlay reads off a Node.

use k8s_openapi::api::core::v1::Node;
use skiff_api::cidr::Cidr;

/// The node's podCIDR, once the controller-manager assigned one.
pub fn pod_cidr(node: &Node) -> Option<Cidr> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// The node's InternalIP, as its kubelet registered it.
pub fn internal_ip(node: &Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())
}
