//! Whether a pod may run on a node, by the rules every component must read
//! alike: the scheduler filters with them, the taint eviction controller
//! evicts with them, and a DaemonSet's controller picks its nodes with them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PodSpec, Taint, Toleration,
};

/// Whether `toleration` tolerates `taint`, by Kubernetes' rules: an empty
/// effect matches every effect, an empty key with `Exists` matches every
/// taint, `Equal` (the default) compares values.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty()) {
        if key != taint.key {
            return false;
        }
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The first of `taints` with a NoSchedule or NoExecute effect that none of
/// `tolerations` tolerates: what keeps a pod off the node.
pub fn untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// Whether one requirement holds for `value` (the label, or field, if set).
fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // Gt and Lt take exactly one integer value; a label that is not an
        // integer never matches.
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else { return false };
            let Ok(bound) = bound.parse::<i64>() else { return false };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node named `name` with `labels` matches `term`: all its
/// expressions and fields; a term with neither matches nothing, as in
/// Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, labels: Option<&BTreeMap<String, String>>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            // metadata.name is the only node field selectors may name.
            let value = (r.key == "metadata.name").then_some(name);
            requirement_matches(r, value)
        })
}

/// Whether `node` matches the pod's `nodeSelector` and, when it has any, one
/// of its required node affinity terms.
pub fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, labels, name)))
}

/// Whether a PersistentVolume may be used on the node named `name` with
/// `labels`: it has no node affinity, or one of its required terms matches
/// (a local volume lives on one node).
pub fn volume_allows(volume: &PersistentVolume, labels: Option<&BTreeMap<String, String>>, name: &str) -> bool {
    let required = volume.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref());
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, labels, name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toleration(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn tolerations_match_as_kubernetes_matches_them() {
        let taint =
            Taint { key: "k".into(), value: Some("v".into()), effect: "NoSchedule".into(), ..Default::default() };
        assert!(tolerates(&toleration(json!({"key": "k", "value": "v"})), &taint));
        assert!(!tolerates(&toleration(json!({"key": "k", "value": "w"})), &taint));
        assert!(tolerates(&toleration(json!({"key": "k", "operator": "Exists"})), &taint));
        assert!(
            tolerates(&toleration(json!({"operator": "Exists"})), &taint),
            "an empty key with Exists tolerates all"
        );
        assert!(!tolerates(&toleration(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})), &taint));
        let prefer = Taint { effect: "PreferNoSchedule".into(), ..taint.clone() };
        assert!(untolerated(&[prefer, taint.clone()], &[]).is_some_and(|t| t.effect == "NoSchedule"));
        assert!(untolerated(&[taint], &[toleration(json!({"operator": "Exists"}))]).is_none());
    }

    #[test]
    fn a_node_matches_the_selector_and_a_required_term() {
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"disk": "ssd"}}})).unwrap();
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        assert!(node_matches(&spec(json!({"containers": []})), &node));
        assert!(node_matches(&spec(json!({"containers": [], "nodeSelector": {"disk": "ssd"}})), &node));
        assert!(!node_matches(&spec(json!({"containers": [], "nodeSelector": {"disk": "hdd"}})), &node));
        let by_name = |name: &str| {
            spec(
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}]}}}}),
            )
        };
        assert!(node_matches(&by_name("n1"), &node));
        assert!(!node_matches(&by_name("n2"), &node));
    }
}
