//! NodeRestriction, as Kubernetes' admission plugin of that name: a kubelet
//! (the user `system:node:NAME` in the group `system:nodes`) may change
//! only its own Node, its own Lease, and the pods bound to it; it creates
//! no pods. RBAC's `system:node` role says what kubelets may do at all;
//! this says to which objects, so one node's credentials can't take over
//! another node or its workloads.

use serde_json::Value;
use skiff_api::well_known::{node_name, NODES_GROUP, NODE_LEASE_NAMESPACE};

use super::{Access, UserInfo};
use crate::registry::Registry;
use crate::Error;

/// The node a kubelet's user acts for, if the user is a kubelet.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    node_name(&user.name).filter(|_| user.groups.iter().any(|g| g == NODES_GROUP))
}

/// Ok unless `user` is a kubelet asking to change what is not its own.
pub async fn admit(registry: &Registry, user: &UserInfo, access: &Access<'_>) -> Result<(), Error> {
    let Some(node) = node_of(user) else { return Ok(()) };
    if matches!(access.verb, "get" | "list" | "watch") {
        return Ok(());
    }
    let denied = |what: String| Err(Error::Denied(format!("node {node:?} {what}")));
    match access.kind {
        "Node" if access.name != node => denied(format!("is not allowed to modify node {:?}", access.name)),
        "Lease" if access.namespace == NODE_LEASE_NAMESPACE && access.name != node => {
            denied(format!("is not allowed to modify the lease of node {:?}", access.name))
        }
        "Pod" if access.verb == "create" && access.subresource.is_empty() => {
            denied("may not create pods: pods come from the API, kubelets run them".into())
        }
        "Pod" => {
            // spec.nodeName never changes once set, so the cache may answer.
            let bound_to = match registry.get_value_cached("Pod", access.namespace, access.name).await {
                Ok(pod) => pod.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string),
                // Missing: the call itself says so.
                Err(Error::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            if bound_to.as_deref() == Some(node) {
                Ok(())
            } else {
                denied(format!("may only change pods bound to it, and pod {}/{} is not", access.namespace, access.name))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo { name: name.into(), uid: String::new(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    #[test]
    fn only_node_users_in_the_nodes_group_are_kubelets() {
        assert_eq!(node_of(&user("system:node:a", &["system:nodes"])), Some("a"));
        assert_eq!(node_of(&user("system:node:a", &[])), None, "the name alone is not enough");
        assert_eq!(node_of(&user("system:hollow-nodes", &["system:nodes"])), None);
        assert_eq!(node_of(&user("system:node:", &["system:nodes"])), None);
    }
}
