//! ResourceQuota admission, as Kubernetes' ResourceQuota plugin: a new
//! object is charged to every quota of its namespace that limits something
//! it uses, by a compare-and-swap of the quota's `status.used`, so that two
//! apiservers admitting at once never both spend the last unit. An object
//! that would take a quota past `spec.hard` is refused, naming the quota,
//! what it asked, what is used and the limit. The controller-manager's quota
//! controller fills `status` first and recounts it as objects go.
//!
//! An update is charged what it adds (a Service turned LoadBalancer, a
//! claim grown), as Kubernetes charges the new usage less the old, never
//! below zero: what an update frees comes back with the controller's
//! recount.

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_api::kinds::KindInfo;
use skiff_api::quantity::parse_milli;
use skiff_api::quota::{containers_missing, format_milli, usage};

use super::Admitted;
use crate::registry::Registry;
use crate::Error;

const KIND: &str = "ResourceQuota";
/// Charges lost to another writer's concurrent charge, then given up.
const CONFLICT_RETRIES: usize = 10;

pub async fn charge(
    registry: &Registry,
    info: &KindInfo,
    namespace: &str,
    object: &mut Admitted<'_>,
) -> Result<(), Error> {
    let quotas = registry.cached_in_namespace(KIND, namespace).await?;
    if quotas.is_empty() {
        return Ok(());
    }
    let Some(object) = object.value() else { return Ok(()) };
    charge_all(registry, info, namespace, &quotas, Usage { new: object, old: None }).await
}

/// Charges an update of `old` to `new` what it uses beyond `old`.
pub async fn charge_update(
    registry: &Registry,
    info: &KindInfo,
    namespace: &str,
    old: &Value,
    new: &Value,
) -> Result<(), Error> {
    let quotas = registry.cached_in_namespace(KIND, namespace).await?;
    if quotas.is_empty() {
        return Ok(());
    }
    charge_all(registry, info, namespace, &quotas, Usage { new, old: Some(old) }).await
}

/// The object charged, and on an update what it was before.
#[derive(Clone, Copy)]
struct Usage<'a> {
    new: &'a Value,
    old: Option<&'a Value>,
}

impl Usage<'_> {
    /// What is charged for `resource`: all of it on a create, the growth
    /// on an update.
    fn of(&self, info: &KindInfo, resource: &str) -> Option<i128> {
        let new = usage(info, self.new, resource)?;
        let old = self.old.and_then(|old| usage(info, old, resource)).unwrap_or(0);
        Some(new.saturating_sub(old).max(0))
    }
}

async fn charge_all(
    registry: &Registry,
    info: &KindInfo,
    namespace: &str,
    quotas: &[Value],
    object: Usage<'_>,
) -> Result<(), Error> {
    let object_name = object.new["metadata"]["name"].as_str().unwrap_or_default();
    let refused = |why: String| Error::Forbidden(format!("{} {object_name:?} is forbidden: {why}", info.plural));
    // Check every quota before charging any, so a refusal spends nothing.
    let mut charges = Vec::new();
    for quota in quotas {
        if let Some(charge) = Charge::of(quota, info, object).map_err(refused)? {
            charges.push(charge);
        }
    }
    for charge in charges {
        charge.write(registry, namespace, info, object).await.map_err(|e| match e {
            ChargeError::Refused(why) => refused(why),
            ChargeError::Store(e) => e,
        })?;
    }
    Ok(())
}

/// What one quota limits that the object uses, and by how much.
struct Charge {
    quota: String,
    delta: BTreeMap<String, i128>,
}

enum ChargeError {
    Refused(String),
    Store(Error),
}

impl Charge {
    /// None when the quota limits nothing the object uses.
    fn of(quota: &Value, info: &KindInfo, object: Usage<'_>) -> Result<Option<Self>, String> {
        let name = quota["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut delta = BTreeMap::new();
        for resource in quota["spec"]["hard"].as_object().into_iter().flatten().map(|(k, _)| k) {
            let Some(used) = object.of(info, resource) else { continue };
            // A pod's resources are fixed at create, so only then checked.
            if info.kind == "Pod" && object.old.is_none() {
                let missing = containers_missing(object.new, resource);
                if !missing.is_empty() {
                    return Err(format!("failed quota: {name}: must specify {resource} for: {}", missing.join(",")));
                }
            }
            // An update that adds nothing to a resource is not charged it.
            if used != 0 || object.old.is_none() {
                delta.insert(resource.clone(), used);
            }
        }
        if delta.is_empty() {
            return Ok(None);
        }
        let charge = Self { quota: name, delta };
        charge.check(quota)?;
        Ok(Some(charge))
    }

    /// The quota's usage after this charge, if within its hard limits.
    fn check(&self, quota: &Value) -> Result<BTreeMap<String, i128>, String> {
        let status = &quota["status"];
        let mut after = BTreeMap::new();
        let mut exceeded = Vec::new();
        for (resource, delta) in &self.delta {
            // Enforced from the hard limit the controller has seen: before
            // that, the quota's usage is unknown and nothing is admitted.
            let Some(hard) = status["hard"][resource].as_str().and_then(|q| parse_milli(q).ok()) else {
                return Err(format!("status unknown for quota: {}, resource: {resource}", self.quota));
            };
            let used = status["used"][resource].as_str().and_then(|q| parse_milli(q).ok()).unwrap_or(0);
            let total = used.saturating_add(*delta);
            if *delta > 0 && total > hard {
                exceeded.push((resource, [*delta, used, hard]));
            }
            after.insert(resource.clone(), total);
        }
        if !exceeded.is_empty() {
            // Requested, used and limited, each as `resource=amount,…`.
            let list = |column: usize| {
                let amounts = exceeded.iter().map(|(r, amounts)| format!("{r}={}", format_milli(amounts[column])));
                amounts.collect::<Vec<_>>().join(",")
            };
            return Err(format!(
                "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                self.quota,
                list(0),
                list(1),
                list(2)
            ));
        }
        Ok(after)
    }

    /// Writes the charge to the quota's status, re-reading and re-checking
    /// when another charge got there first.
    async fn write(
        &self,
        registry: &Registry,
        namespace: &str,
        info: &KindInfo,
        object: Usage<'_>,
    ) -> Result<(), ChargeError> {
        if self.delta.values().all(|d| *d == 0) {
            return Ok(());
        }
        for _ in 0..CONFLICT_RETRIES {
            let current = registry.get(KIND, namespace, &self.quota).await.map_err(ChargeError::Store)?;
            let mut quota: Value = serde_json::from_slice(&current)
                .map_err(|source| ChargeError::Store(Error::BadJson { what: "a stored ResourceQuota", source }))?;
            // The quota may have changed since the first look.
            let Some(charge) = Self::of(&quota, info, object).map_err(ChargeError::Refused)? else { return Ok(()) };
            let after = charge.check(&quota).map_err(ChargeError::Refused)?;
            // check() found status.hard, so status is an object.
            if !quota["status"]["used"].is_object() {
                quota["status"]["used"] = Value::Object(Default::default());
            }
            if let Some(used) = quota["status"]["used"].as_object_mut() {
                for (resource, total) in after {
                    used.insert(resource, Value::String(format_milli(total)));
                }
            }
            let body = serde_json::to_vec(&quota)
                .map_err(|source| ChargeError::Store(Error::BadJson { what: "a ResourceQuota", source }))?;
            match registry.update(KIND, namespace, &body, true, false).await {
                Ok(_) => return Ok(()),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(ChargeError::Store(e)),
            }
        }
        Err(ChargeError::Store(Error::Forbidden(format!(
            "quota {} is being charged by too many writers at once: try again",
            self.quota
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created(object: &Value) -> Usage<'_> {
        Usage { new: object, old: None }
    }

    fn quota(hard: Value, status: Value) -> Value {
        json!({"metadata": {"name": "q"}, "spec": {"hard": hard}, "status": status})
    }

    fn pod(cpu: &str) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}}]}})
    }

    #[test]
    fn a_pod_within_the_quota_is_charged_one_past_it_is_refused() {
        let info = KindInfo::by_kind("Pod").unwrap();
        let q = quota(
            json!({"pods": "2", "requests.cpu": "1"}),
            json!({"hard": {"pods": "2", "requests.cpu": "1"}, "used": {"pods": "1", "requests.cpu": "500m"}}),
        );
        let charge = Charge::of(&q, info, created(&pod("250m"))).unwrap().expect("charged");
        assert_eq!(charge.check(&q).unwrap(), BTreeMap::from([("pods".into(), 2000), ("requests.cpu".into(), 750)]));
        let refused = Charge::of(&q, info, created(&pod("750m"))).err().unwrap();
        assert_eq!(
            refused,
            "exceeded quota: q, requested: requests.cpu=750m, used: requests.cpu=500m, limited: requests.cpu=1"
        );
    }

    #[test]
    fn an_unsynced_quota_or_a_pod_without_requests_is_refused() {
        let info = KindInfo::by_kind("Pod").unwrap();
        let unsynced = quota(json!({"pods": "2"}), json!(null));
        assert_eq!(
            Charge::of(&unsynced, info, created(&pod("1"))).err().unwrap(),
            "status unknown for quota: q, resource: pods"
        );
        let q = quota(json!({"limits.memory": "1Gi"}), json!({"hard": {"limits.memory": "1Gi"}}));
        let refused = Charge::of(&q, info, created(&pod("1"))).err().unwrap();
        assert_eq!(refused, "failed quota: q: must specify limits.memory for: c");
    }

    #[test]
    fn a_quota_of_other_things_takes_nothing() {
        let info = KindInfo::by_kind("ConfigMap").unwrap();
        let q = quota(json!({"pods": "2"}), json!({"hard": {"pods": "2"}}));
        assert!(Charge::of(&q, info, created(&json!({"metadata": {"name": "c"}}))).unwrap().is_none());
    }

    #[test]
    fn an_update_is_charged_only_what_it_adds() {
        let info = KindInfo::by_kind("Service").unwrap();
        let q = quota(
            json!({"services": "5", "services.loadbalancers": "1"}),
            json!({"hard": {"services": "5", "services.loadbalancers": "1"},
                   "used": {"services": "2", "services.loadbalancers": "1"}}),
        );
        let plain = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        let relabelled = json!({"metadata": {"name": "s", "labels": {"a": "b"}}, "spec": {"ports": [{"port": 80}]}});
        let update = Usage { new: &relabelled, old: Some(&plain) };
        assert!(Charge::of(&q, info, update).unwrap().is_none(), "nothing added, nothing charged");
        let balanced = json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
        let refused = Charge::of(&q, info, Usage { new: &balanced, old: Some(&plain) }).err().unwrap();
        assert_eq!(
            refused,
            "exceeded quota: q, requested: services.loadbalancers=1, used: services.loadbalancers=1, \
             limited: services.loadbalancers=1"
        );
        let back = Usage { new: &plain, old: Some(&balanced) };
        assert!(Charge::of(&q, info, back).unwrap().is_none(), "what an update frees is the recount's");
    }
}
