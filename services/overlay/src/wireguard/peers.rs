//! Which peers this node should have: every other node that published a
//! WireGuard key and endpoint and has a podCIDR. A node whose values don't
//! parse is rejected (reported, never fatal): one bad Node must not break
//! the mesh for the others.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Node;
use skiff_api::cidr::Cidr;
use wireguard_control::Key;

use skiff_api::well_known::{WIREGUARD_ENDPOINT_ANNOTATION, WIREGUARD_PUBLIC_KEY_ANNOTATION};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub public_key: Key,
    pub endpoint: SocketAddr,
    pub pod_cidr: Cidr,
}

/// A node left out of the mesh, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub node: String,
    pub reason: &'static str,
    pub message: String,
}

/// The peers `self_name` should have among `nodes`, sorted by node name.
/// Nodes that haven't published yet are simply not peers (yet).
pub fn desired_peers<'a>(nodes: impl IntoIterator<Item = &'a Node>, self_name: &str) -> (Vec<Peer>, Vec<Rejected>) {
    let mut peers = Vec::new();
    let mut rejected = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        if name == self_name || node.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let annotations = node.metadata.annotations.as_ref();
        let key = annotations.and_then(|a| a.get(WIREGUARD_PUBLIC_KEY_ANNOTATION));
        let endpoint = annotations.and_then(|a| a.get(WIREGUARD_ENDPOINT_ANNOTATION));
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()).filter(|c| !c.is_empty());
        let (Some(key), Some(endpoint), Some(cidr)) = (key, endpoint, cidr) else { continue };
        match parse_peer(&name, key, endpoint, cidr) {
            Ok(peer) => peers.push(peer),
            Err(rejection) => rejected.push(rejection),
        }
    }
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    (peers, rejected)
}

fn parse_peer(node: &str, key: &str, endpoint: &str, cidr: &str) -> Result<Peer, Rejected> {
    let reject = |reason, message: String| Rejected { node: node.to_string(), reason, message };
    let public_key = Key::from_base64(key.trim()).map_err(|_| {
        reject(
            "InvalidWireGuardKey",
            format!("{WIREGUARD_PUBLIC_KEY_ANNOTATION} {key:?} is not a base64 WireGuard key"),
        )
    })?;
    let endpoint = endpoint.parse().map_err(|_| {
        reject("InvalidWireGuardEndpoint", format!("{WIREGUARD_ENDPOINT_ANNOTATION} {endpoint:?} is not IP:PORT"))
    })?;
    let pod_cidr = cidr.parse().map_err(|e| reject("InvalidPodCIDR", format!("spec.podCIDR {cidr:?}: {e}")))?;
    Ok(Peer { node: node.to_string(), public_key, endpoint, pod_cidr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, key: Option<&str>, endpoint: &str, cidr: &str) -> Node {
        let mut annotations = json!({ WIREGUARD_ENDPOINT_ANNOTATION: endpoint });
        if let Some(k) = key {
            annotations[WIREGUARD_PUBLIC_KEY_ANNOTATION] = json!(k);
        }
        serde_json::from_value(
            json!({"metadata": {"name": name, "annotations": annotations}, "spec": {"podCIDR": cidr}}),
        )
        .unwrap()
    }

    #[test]
    fn other_published_nodes_are_peers_and_bad_ones_are_rejected() {
        let key = Key::generate_private().get_public().to_base64();
        let nodes = [
            node("self", Some(&key), "172.31.1.11:51820", "10.42.1.0/24"),
            node("b", Some(&key), "172.31.1.12:51820", "10.42.2.0/24"),
            node("unpublished", None, "172.31.1.13:51820", "10.42.3.0/24"),
            node("badkey", Some("not-a-key"), "172.31.1.14:51820", "10.42.4.0/24"),
            node("badendpoint", Some(&key), "somewhere", "10.42.5.0/24"),
        ];
        let (peers, rejected) = desired_peers(&nodes, "self");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].node, "b");
        assert_eq!(peers[0].endpoint, "172.31.1.12:51820".parse().unwrap());
        assert_eq!(peers[0].pod_cidr.to_string(), "10.42.2.0/24");
        let reasons: Vec<(&str, &str)> = rejected.iter().map(|r| (r.node.as_str(), r.reason)).collect();
        assert_eq!(reasons, [("badkey", "InvalidWireGuardKey"), ("badendpoint", "InvalidWireGuardEndpoint")]);
    }

    #[test]
    fn nodes_without_a_pod_cidr_or_being_deleted_are_not_peers_yet() {
        let key = Key::generate_private().get_public().to_base64();
        let mut leaving = node("leaving", Some(&key), "172.31.1.12:51820", "10.42.2.0/24");
        leaving.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
        let nodes = [node("no-cidr", Some(&key), "172.31.1.13:51820", ""), leaving];
        assert_eq!(desired_peers(&nodes, "self"), (vec![], vec![]));
    }

    #[test]
    fn a_bad_pod_cidr_is_rejected_and_peers_come_sorted_by_node() {
        let key = Key::generate_private().get_public().to_base64();
        let nodes = [
            node("z", Some(&key), "172.31.1.14:51820", "10.42.4.0/24"),
            node("m", Some(&key), "172.31.1.15:51820", "10.42.300.0/24"),
            node("a", Some(&key), "172.31.1.12:51820", "10.42.2.0/24"),
        ];
        let (peers, rejected) = desired_peers(&nodes, "self");
        assert_eq!(peers.iter().map(|p| p.node.as_str()).collect::<Vec<_>>(), ["a", "z"]);
        assert_eq!(rejected.len(), 1);
        assert_eq!((rejected[0].node.as_str(), rejected[0].reason), ("m", "InvalidPodCIDR"));
    }
}
