//! RBAC over the apiserver's own watch caches: the compiled [`Policy`] is
//! rebuilt when a Role, ClusterRole or binding changes, and shared by every
//! request until the next change, so a call costs a lookup, not a decode.

use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use skiff_api::KindInfo;

use super::rbac::Policy;
use crate::cache::WatchCache;
use crate::registry::Registry;

/// The kinds the policy is made of, in the order [`Policy::build`] takes them.
const POLICY_KINDS: [&str; 4] = ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"];

pub struct RbacAuthorizer {
    caches: Vec<Arc<WatchCache>>,
    /// The policy and the caches' revisions it was built from.
    current: RwLock<(Vec<i64>, Arc<Policy>)>,
}

impl RbacAuthorizer {
    pub fn new(registry: &Registry) -> Self {
        let caches = POLICY_KINDS
            .iter()
            .map(|kind| registry.cache(KindInfo::by_kind(kind).expect("RBAC kinds are served")).clone())
            .collect();
        let this = Self {
            caches,
            current: RwLock::new((Vec::new(), Arc::new(Policy::build(vec![], vec![], vec![], vec![])))),
        };
        this.policy();
        this
    }

    /// The policy as of the caches' latest revisions. Requests after a
    /// change of roles see it as soon as this apiserver's cache has it, as
    /// with Kubernetes' informer-fed authorizer.
    pub fn policy(&self) -> Arc<Policy> {
        let revisions: Vec<i64> = self.caches.iter().map(|c| c.revision()).collect();
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == revisions {
                return current.1.clone();
            }
        }
        let policy = Arc::new(Policy::build(self.decoded(0), self.decoded(1), self.decoded(2), self.decoded(3)));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (revisions, policy.clone());
        policy
    }

    /// Every cached object of the `i`th policy kind. One that doesn't
    /// decode (admission would not have let it in) grants nothing.
    fn decoded<T: DeserializeOwned>(&self, i: usize) -> Vec<T> {
        let cache = &self.caches[i];
        let (objects, _) = cache.objects(&cache.info.key_prefix(None));
        objects
            .iter()
            .filter_map(|o| match serde_json::from_slice(&o.json) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(key = %o.key, error = %e, "RBAC object does not decode; it grants nothing");
                    None
                }
            })
            .collect()
    }
}
