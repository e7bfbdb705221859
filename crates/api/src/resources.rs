//! Resource arithmetic on pods: what a pod requests and what it is limited
//! to, in the thousandths that [`crate::quantity::parse_milli`] yields (so
//! CPU millicores and memory bytes are both exact). The scheduler fits pods
//! with it; ResourceQuota and LimitRange admission and the quota controller
//! count with it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// An amount of each resource, in thousandths of its unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub ephemeral_storage: i128,
    /// Extended resources (`nvidia.com/gpu`), hugepages and anything else.
    pub scalar: BTreeMap<String, i128>,
}

impl Resources {
    /// Parses a resource list; quantities that do not parse count as zero
    /// (the apiserver validated them, so this is only defence).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list {
            if name == PODS {
                continue;
            }
            r.set(name, crate::quantity::parse_milli(&q.0).unwrap_or(0));
        }
        r
    }

    pub fn get(&self, name: &str) -> i128 {
        match name {
            CPU => self.cpu,
            MEMORY => self.memory,
            EPHEMERAL_STORAGE => self.ephemeral_storage,
            other => self.scalar.get(other).copied().unwrap_or(0),
        }
    }

    pub fn set(&mut self, name: &str, value: i128) {
        match name {
            CPU => self.cpu = value,
            MEMORY => self.memory = value,
            EPHEMERAL_STORAGE => self.ephemeral_storage = value,
            other => {
                self.scalar.insert(other.to_string(), value);
            }
        }
    }

    /// Saturating, as is [`Resources::sub`]: each amount parsed, but a sum
    /// of clients' numbers may still pass i128's range.
    pub fn add(&mut self, other: &Resources) {
        self.combine(other, i128::saturating_add);
    }

    pub fn sub(&mut self, other: &Resources) {
        self.combine(other, i128::saturating_sub);
    }

    fn combine(&mut self, other: &Resources, op: fn(i128, i128) -> i128) {
        self.cpu = op(self.cpu, other.cpu);
        self.memory = op(self.memory, other.memory);
        self.ephemeral_storage = op(self.ephemeral_storage, other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = op(*e, *v);
        }
    }

    /// Each resource at the larger of the two amounts.
    pub fn max_with(&mut self, other: &Resources) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    /// The resources named here with a non-zero amount, cpu, memory and
    /// ephemeral-storage first.
    pub fn non_zero(&self) -> impl Iterator<Item = (&str, i128)> {
        [(CPU, self.cpu), (MEMORY, self.memory), (EPHEMERAL_STORAGE, self.ephemeral_storage)]
            .into_iter()
            .chain(self.scalar.iter().map(|(k, v)| (k.as_str(), *v)))
            .filter(|(_, v)| *v != 0)
    }
}

/// A container's requests; a resource with only a limit requests its limit,
/// as Kubernetes' defaulting makes it.
pub fn container_requests(c: &Container) -> Resources {
    let Some(res) = &c.resources else { return Resources::default() };
    let mut r = res.limits.as_ref().map(Resources::from_list).unwrap_or_default();
    if let Some(requests) = &res.requests {
        for (name, v) in Resources::from_list(requests).non_zero() {
            r.set(name, v);
        }
        // An explicit zero request wins over the limit too.
        for (name, q) in requests {
            if name != PODS && crate::quantity::parse_milli(&q.0).unwrap_or(0) == 0 {
                r.set(name, 0);
            }
        }
    }
    r
}

/// A container's limits.
fn container_limits(c: &Container) -> Resources {
    c.resources.as_ref().and_then(|r| r.limits.as_ref()).map(Resources::from_list).unwrap_or_default()
}

/// What a pod needs from a node, computed as Kubernetes'
/// `resourcehelper.PodRequests` does: the sum of its containers, or the
/// largest init container if that is more (init containers run one at a
/// time, before the others), with restartable ("sidecar") init containers
/// counted alongside everything started after them; plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    pod_total(pod, container_requests)
}

/// What a pod is limited to, summed as [`pod_requests`] sums requests (as
/// Kubernetes' `resourcehelper.PodLimits`).
pub fn pod_limits(pod: &Pod) -> Resources {
    pod_total(pod, container_limits)
}

fn pod_total(pod: &Pod, of: fn(&Container) -> Resources) -> Resources {
    let Some(spec) = &pod.spec else { return Resources::default() };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&of(c));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = of(c);
        let during = if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&r);
            sidecars.add(&r);
            sidecars.clone()
        } else {
            let mut d = r;
            d.add(&sidecars);
            d
        };
        init_peak.max_with(&during);
    }
    reqs.max_with(&init_peak);
    if let Some(overhead) = &spec.overhead {
        reqs.add(&Resources::from_list(overhead));
    }
    reqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn sums_containers_and_takes_the_init_peak() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m", "nvidia.com/gpu": "1"}}},
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}},
            ],
        }));
        let r = pod_requests(&p);
        assert_eq!(r.cpu, 1000);
        assert_eq!(r.memory, 64 * 1024 * 1024 * 1000);
        assert_eq!(r.get("nvidia.com/gpu"), 1000);
    }

    #[test]
    fn sidecars_add_to_the_sum_and_to_later_init_containers() {
        let p = pod(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "200m"}}},
                {"name": "i", "resources": {"requests": {"cpu": "250m"}}},
            ],
        }));
        // containers + sidecar = 300m; during init: sidecar + i = 450m.
        assert_eq!(pod_requests(&p).cpu, 450);
    }

    #[test]
    fn limits_sum_as_requests_do() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": "100m"}}},
                {"name": "b", "resources": {"requests": {"cpu": "100m"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"limits": {"cpu": "2"}}}],
        }));
        assert_eq!(pod_limits(&p).cpu, 2000, "the init container's peak");
        assert_eq!(pod_requests(&p).cpu, 2000, "its limit is its request");
    }
}
