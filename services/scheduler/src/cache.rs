//! The scheduler's view of the cluster: per node, what it offers and what
//! the pods bound or assumed to it already take.
//!
//! Fed by the node and pod informers, and written by the scheduling cycle
//! itself: once a node is chosen the pod is *assumed* on it at once, so the
//! next cycle sees the usage without waiting for the Bind and its watch
//! event. The watch event later confirms the assumption; a failed Bind
//! forgets it.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::PodInfo;
use crate::resources::{self, Resources};

/// One node and the pods on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    /// None once the node object is gone while pods still name it.
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    /// Sum of the requests of the pods here.
    pub requested: Resources,
    /// Sum of CPU and memory with defaults for pods that ask for nothing
    /// (see [`resources::non_zero_requests`]), for scoring.
    pub non_zero_requested: (i128, i128),
    pub pod_count: usize,
    /// How many pods of each controller (by uid) are here.
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    /// A node with nothing on it, for tests and for newly added nodes.
    pub fn new(node: Arc<Node>) -> Self {
        let mut info = NodeInfo { name: node.metadata.name.clone().unwrap_or_default(), ..Default::default() };
        info.set_node(node);
        info
    }

    fn set_node(&mut self, node: Arc<Node>) {
        let (allocatable, pods) = resources::node_allocatable(&node);
        self.allocatable = allocatable;
        self.allowed_pods = pods;
        self.node = Some(node);
    }

    /// Accounts a pod here (used by the cache, and by unit tests to fill a node).
    pub fn add_pod(&mut self, requests: &Resources, non_zero: (i128, i128), owner: Option<&str>) {
        self.requested.add(requests);
        self.non_zero_requested.0 = self.non_zero_requested.0.saturating_add(non_zero.0);
        self.non_zero_requested.1 = self.non_zero_requested.1.saturating_add(non_zero.1);
        self.pod_count += 1;
        if let Some(o) = owner {
            *self.owners.entry(o.to_string()).or_insert(0) += 1;
        }
    }

    fn remove_pod(&mut self, requests: &Resources, non_zero: (i128, i128), owner: Option<&str>) {
        self.requested.sub(requests);
        self.non_zero_requested.0 = self.non_zero_requested.0.saturating_sub(non_zero.0);
        self.non_zero_requested.1 = self.non_zero_requested.1.saturating_sub(non_zero.1);
        self.pod_count = self.pod_count.saturating_sub(1);
        if let Some(o) = owner {
            if let Some(n) = self.owners.get_mut(o) {
                *n -= 1;
                if *n == 0 {
                    self.owners.remove(o);
                }
            }
        }
    }
}

/// A pod the cache accounts on a node.
#[derive(Debug, Clone)]
struct PodEntry {
    uid: String,
    node: String,
    requests: Resources,
    non_zero: (i128, i128),
    owner: Option<String>,
    /// Placed by this scheduler and not yet seen bound through the watch.
    assumed: bool,
}

/// Every node and every pod that takes room on one.
#[derive(Debug, Default)]
pub struct Cache {
    /// The nodes that exist, in a stable order the scheduling cycle walks
    /// from a rotating start (a Vec, so the walk does no hashing);
    /// `index` finds a name's slot.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Nodes that pods name but that do not exist (deleted, or not seen
    /// yet): their usage is kept for when the node (re)appears.
    ghosts: HashMap<String, NodeInfo>,
    pods: HashMap<String, PodEntry>,
}

impl Cache {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many nodes exist (not counting ones only pods still name).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The `i`-th existing node, `i < node_count()`.
    pub fn node_at(&self, i: usize) -> &NodeInfo {
        &self.nodes[i]
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i]).or_else(|| self.ghosts.get(name))
    }

    /// Adds or updates a node, keeping what its pods use.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            self.nodes[i].set_node(node);
            return;
        }
        let mut info =
            self.ghosts.remove(&name).unwrap_or_else(|| NodeInfo { name: name.clone(), ..Default::default() });
        info.set_node(node);
        self.index.insert(name, self.nodes.len());
        self.nodes.push(info);
    }

    /// Removes a node from the candidates; its pods stay accounted until
    /// their own deletions arrive (the node may come back first).
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else { return };
        let mut info = self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
        if info.pod_count > 0 {
            info.node = None;
            self.ghosts.insert(info.name.clone(), info);
        }
    }

    /// Whether the pod is bound or assumed somewhere, as far as we know.
    pub fn has_pod(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// Places a pod on `node` before its Bind is confirmed.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        self.remove_pod(&pod.key);
        self.insert(
            pod.key.clone(),
            PodEntry {
                uid: pod.uid.clone(),
                node: node.to_string(),
                requests: pod.requests.clone(),
                non_zero: pod.non_zero,
                owner: pod.owner.clone(),
                assumed: true,
            },
        );
    }

    /// Undoes [`assume`](Self::assume) after a failed Bind; a no-op when the
    /// watch has meanwhile shown the pod bound (elsewhere, or replaced).
    pub fn forget(&mut self, key: &str, uid: &str, node: &str) -> bool {
        let ours = self.pods.get(key).is_some_and(|p| p.assumed && p.uid == uid && p.node == node);
        if ours {
            self.remove_pod(key);
        }
        ours
    }

    /// Records a pod as the watch shows it: bound and running pods take
    /// room; pending, finished ones don't (assumptions stay until the Bind
    /// answers). Returns whether room was freed on some node.
    pub fn update_pod(&mut self, pod: &Arc<Pod>) -> bool {
        let meta = &pod.metadata;
        let key =
            skiff_api::meta::object_key(meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""));
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("");
        let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if finished {
            return self.remove_pod(&key);
        }
        if node.is_empty() {
            return false;
        }
        // The common case (a status update of a bound pod) costs one lookup:
        // requests are only computed for a pod new to this node.
        if let Some(entry) = self.pods.get_mut(&key) {
            if Some(&entry.uid) == meta.uid.as_ref() && entry.node == node {
                entry.assumed = false;
                return false;
            }
        }
        let info = PodInfo::new(pod.clone());
        let freed = self.remove_pod(&key);
        self.insert(
            key,
            PodEntry {
                uid: info.uid,
                node: node.to_string(),
                requests: info.requests,
                non_zero: info.non_zero,
                owner: info.owner,
                assumed: false,
            },
        );
        freed
    }

    /// Removes a pod; returns whether it took room on a node.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(entry) = self.pods.remove(key) else { return false };
        let (requests, non_zero, owner) = (&entry.requests, entry.non_zero, entry.owner.as_deref());
        if let Some(&i) = self.index.get(&entry.node) {
            self.nodes[i].remove_pod(requests, non_zero, owner);
        } else if let Some(ghost) = self.ghosts.get_mut(&entry.node) {
            ghost.remove_pod(requests, non_zero, owner);
            if ghost.pod_count == 0 {
                self.ghosts.remove(&entry.node);
            }
        }
        true
    }

    fn insert(&mut self, key: String, entry: PodEntry) {
        let node = match self.index.get(&entry.node) {
            Some(&i) => &mut self.nodes[i],
            None => self
                .ghosts
                .entry(entry.node.clone())
                .or_insert_with(|| NodeInfo { name: entry.node.clone(), ..Default::default() }),
        };
        node.add_pod(&entry.requests, entry.non_zero, entry.owner.as_deref());
        self.pods.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": "4"}}}))
                .unwrap(),
        )
    }

    fn pod(name: &str, node: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn assume_confirm_and_forget() {
        let mut c = Cache::new();
        c.set_node(node("a"));
        let p = PodInfo::new(pod("p", ""));
        c.assume(&p, "a");
        assert_eq!(c.node("a").unwrap().requested.cpu, 1000);
        // The watch confirms the bind: still counted once.
        assert!(!c.update_pod(&pod("p", "a")));
        assert_eq!(c.node("a").unwrap().pod_count, 1);
        // A confirmed pod is not forgotten by a late Bind failure.
        assert!(!c.forget("ns/p", "uid-p", "a"));
        assert!(c.remove_pod("ns/p"));
        assert_eq!(c.node("a").unwrap().requested.cpu, 0);

        c.assume(&p, "a");
        assert!(c.forget("ns/p", "uid-p", "a"));
        assert_eq!(c.node("a").unwrap().pod_count, 0);
    }

    #[test]
    fn pods_of_a_removed_node_keep_it_until_they_go() {
        let mut c = Cache::new();
        c.set_node(node("a"));
        c.set_node(node("b"));
        c.update_pod(&pod("p", "a"));
        c.remove_node("a");
        assert_eq!(c.node_count(), 1);
        assert_eq!(c.node_at(0).name, "b");
        c.set_node(node("a"));
        assert_eq!(c.node("a").unwrap().pod_count, 1);
        c.remove_node("a");
        c.remove_pod("ns/p");
        assert!(c.node("a").is_none());
    }
}
