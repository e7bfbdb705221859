//! What one object counts against a ResourceQuota, by resource name, as
//! Kubernetes' quota evaluators count it. The apiserver charges a new
//! object with it at admission; the controller-manager's quota controller
//! sums it over a namespace into `status.used`.
//!
//! Names understood: object counts (`pods`, `services`, `secrets`,
//! `configmaps`, `persistentvolumeclaims`, `resourcequotas`, and
//! `count/<resource>[.<group>]` for any kind), a pod's compute resources
//! (`requests.<name>` and `limits.<name>`, with `cpu`, `memory` and
//! `ephemeral-storage` alone meaning their requests), and a Service's
//! `services.nodeports` and `services.loadbalancers`, and a claim's
//! `requests.storage`, also per StorageClass. Amounts are in
//! thousandths, as [`crate::quantity::parse_milli`] reads them.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::kinds::KindInfo;
use crate::resources::{pod_limits, pod_requests};

/// Resource names that stand for the requests of the same name.
const BARE_COMPUTE: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// How much `object` (of kind `info`) uses of quota resource `resource`;
/// None when that resource says nothing about this kind.
pub fn usage(info: &KindInfo, object: &Value, resource: &str) -> Option<i128> {
    if counts(info, resource) {
        return Some(if info.kind == "Pod" && !pod_is_active(object) { 0 } else { 1000 });
    }
    match info.kind {
        "Pod" => pod_usage(object, resource),
        "Service" => service_usage(object, resource),
        "PersistentVolumeClaim" => claim_usage(object, resource),
        _ => None,
    }
}

/// Whether `resource` counts objects of kind `info`.
fn counts(info: &KindInfo, resource: &str) -> bool {
    if resource == info.plural {
        return matches!(
            info.plural,
            "pods" | "services" | "secrets" | "configmaps" | "persistentvolumeclaims" | "resourcequotas"
        );
    }
    let Some(counted) = resource.strip_prefix("count/") else { return false };
    let group = info.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match counted.split_once('.') {
        Some((plural, g)) => plural == info.plural && g == group,
        None => counted == info.plural && group.is_empty(),
    }
}

/// A pod counts until it has ended (Succeeded or Failed), as in Kubernetes.
fn pod_is_active(pod: &Value) -> bool {
    !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn pod_usage(object: &Value, resource: &str) -> Option<i128> {
    let (limits, name) = match resource.split_once('.') {
        Some(("requests", name)) => (false, name),
        Some(("limits", name)) => (true, name),
        _ if BARE_COMPUTE.contains(&resource) => (false, resource),
        _ => return None,
    };
    if !pod_is_active(object) {
        return Some(0);
    }
    let pod: Pod = serde_json::from_value(object.clone()).ok()?;
    let totals = if limits { pod_limits(&pod) } else { pod_requests(&pod) };
    Some(totals.get(name))
}

fn service_usage(object: &Value, resource: &str) -> Option<i128> {
    let kind = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
    match resource {
        "services.loadbalancers" => Some(if kind == "LoadBalancer" { 1000 } else { 0 }),
        "services.nodeports" => {
            let ports = object["spec"]["ports"].as_array().map_or(0, Vec::len) as i128;
            Some(if matches!(kind, "NodePort" | "LoadBalancer") { ports * 1000 } else { 0 })
        }
        _ => None,
    }
}

/// A claim's storage: `requests.storage`, and per class
/// `<class>.storageclass.storage.k8s.io/requests.storage` and
/// `…/persistentvolumeclaims`, as Kubernetes' PVC evaluator counts them.
fn claim_usage(object: &Value, resource: &str) -> Option<i128> {
    let storage = || {
        let requested = object["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("0");
        crate::quantity::parse_milli(requested).unwrap_or(0)
    };
    if resource == "requests.storage" {
        return Some(storage());
    }
    let (class, per_class) = resource.split_once(".storageclass.storage.k8s.io/")?;
    if object["spec"]["storageClassName"].as_str() != Some(class) {
        return Some(0);
    }
    match per_class {
        "requests.storage" => Some(storage()),
        "persistentvolumeclaims" => Some(1000),
        _ => None,
    }
}

/// For a pod charged against `resource`: the containers that leave it
/// unset, when a quota on it asks every container to set it (Kubernetes
/// refuses such a pod, since its usage could not be bounded).
pub fn containers_missing(pod: &Value, resource: &str) -> Vec<String> {
    let (field, name) = match resource.split_once('.') {
        Some(("requests", name)) => ("requests", name),
        Some(("limits", name)) => ("limits", name),
        _ if BARE_COMPUTE.contains(&resource) => ("requests", resource),
        _ => return Vec::new(),
    };
    if !matches!(name, "cpu" | "memory") {
        return Vec::new();
    }
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            // A container's limit is its request when it sets none.
            let request_from_limit = field == "requests" && !c["resources"]["limits"][name].is_null();
            c["resources"][field][name].is_null() && !request_from_limit
        })
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A quota amount in thousandths as Kubernetes writes quantities: whole
/// units plain (`3`, `1073741824`), fractions in thousandths (`500m`).
pub fn format_milli(milli: i128) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(name: &str) -> &'static KindInfo {
        KindInfo::by_kind(name).unwrap()
    }

    #[test]
    fn objects_count_by_plural_and_count_slash() {
        let pod = json!({"spec": {"containers": []}});
        assert_eq!(usage(kind("Pod"), &pod, "pods"), Some(1000));
        assert_eq!(usage(kind("Pod"), &pod, "count/pods"), Some(1000));
        assert_eq!(usage(kind("Deployment"), &json!({}), "count/deployments.apps"), Some(1000));
        assert_eq!(usage(kind("Deployment"), &json!({}), "count/deployments"), None, "apps is not the core group");
        assert_eq!(usage(kind("Secret"), &json!({}), "secrets"), Some(1000));
        assert_eq!(usage(kind("Secret"), &json!({}), "pods"), None);
        let done = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert_eq!(usage(kind("Pod"), &done, "pods"), Some(0), "an ended pod counts no more");
    }

    #[test]
    fn a_pod_uses_its_requests_and_limits() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}},
        ]}});
        assert_eq!(usage(kind("Pod"), &pod, "requests.cpu"), Some(750), "b requests its limit");
        assert_eq!(usage(kind("Pod"), &pod, "cpu"), Some(750));
        assert_eq!(usage(kind("Pod"), &pod, "limits.cpu"), Some(1500));
        assert_eq!(usage(kind("Pod"), &pod, "limits.memory"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(usage(kind("Pod"), &pod, "services"), None);
        assert_eq!(containers_missing(&pod, "limits.memory"), vec!["a".to_string()]);
        assert!(containers_missing(&pod, "requests.memory").is_empty(), "b's limit is its request");
    }

    #[test]
    fn services_use_node_ports_and_load_balancers() {
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(usage(kind("Service"), &lb, "services.nodeports"), Some(2000));
        assert_eq!(usage(kind("Service"), &lb, "services.loadbalancers"), Some(1000));
        let plain = json!({"spec": {"ports": [{"port": 80}]}});
        assert_eq!(usage(kind("Service"), &plain, "services.nodeports"), Some(0));
    }

    #[test]
    fn claims_use_their_storage_overall_and_per_class() {
        let claim = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "2Gi"}}}});
        let gib = 1024 * 1024 * 1024 * 1000;
        assert_eq!(usage(kind("PersistentVolumeClaim"), &claim, "requests.storage"), Some(2 * gib));
        let fast = "fast.storageclass.storage.k8s.io/requests.storage";
        assert_eq!(usage(kind("PersistentVolumeClaim"), &claim, fast), Some(2 * gib));
        let slow = "slow.storageclass.storage.k8s.io/persistentvolumeclaims";
        assert_eq!(usage(kind("PersistentVolumeClaim"), &claim, slow), Some(0), "another class");
        let fast_count = "fast.storageclass.storage.k8s.io/persistentvolumeclaims";
        assert_eq!(usage(kind("PersistentVolumeClaim"), &claim, fast_count), Some(1000));
        assert_eq!(usage(kind("PersistentVolumeClaim"), &claim, "requests.cpu"), None);
    }

    #[test]
    fn amounts_print_as_quantities() {
        assert_eq!(format_milli(3000), "3");
        assert_eq!(format_milli(500), "500m");
        assert_eq!(format_milli(0), "0");
    }
}
