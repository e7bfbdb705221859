//! Admission: what a create goes through after authorization and before
//! the registry's validation and storage, in Kubernetes' order of the same
//! plugins. Each step may change the object or refuse it:
//!
//! - `certificates`: a CertificateSigningRequest's requester is the caller;
//! - `service_accounts`: a pod takes its ServiceAccount's automount setting;
//! - `limit_ranger`: a pod's containers get their namespace's LimitRange
//!   defaults and must stay within its bounds;
//! - `storage`: a PersistentVolumeClaim gets the default StorageClass, and
//!   one naming a class that does not exist is refused;
//! - `resource_quota`: the new object is charged to its namespace's
//!   ResourceQuotas, or refused when it would exceed one; an update is
//!   charged what it adds ([`admit_update`]).
//!
//! The object is decoded only when a step needs to look into it: a
//! namespace without LimitRanges or ResourceQuotas costs a cache lookup.

mod certificates;
mod limit_ranger;
mod resource_quota;
mod service_accounts;
mod storage;

use serde_json::Value;
use skiff_api::kinds::KindInfo;

use crate::auth::UserInfo;
use crate::registry::Registry;
use crate::Error;

/// The object to store for `user`'s create of `object` (kind `kind`, in the
/// request's `namespace`): None when it is stored as it was sent.
pub async fn admit_create(
    registry: &Registry,
    user: &UserInfo,
    kind: &str,
    namespace: &str,
    object: &[u8],
    dry_run: bool,
) -> Result<Option<Vec<u8>>, Error> {
    if let Some(csr) = certificates::admit_create(user, kind, object)? {
        return Ok(Some(csr));
    }
    // An unknown kind is the registry's to refuse, with its own message.
    let Ok(info) = KindInfo::by_kind(kind) else { return Ok(None) };
    if !info.namespaced {
        return Ok(None);
    }
    let mut admitted = Admitted { sent: object, value: None, changed: false };
    let namespace = admitted.namespace(namespace);
    if info.kind == "Pod" {
        service_accounts::admit_pod(registry, &namespace, &mut admitted).await?;
        limit_ranger::admit_pod(registry, &namespace, &mut admitted).await?;
    }
    if info.kind == "PersistentVolumeClaim" {
        storage::admit_claim(registry, &mut admitted).await?;
    }
    // A dry run is not charged: it would spend quota on nothing.
    if !dry_run {
        resource_quota::charge(registry, info, &namespace, &mut admitted).await?;
    }
    admitted.into_bytes()
}

/// Admission of an update of `old` to `new` (kind `info`, not a dry run):
/// the namespace's ResourceQuotas are charged what it adds. The
/// registry's commit calls it, so update, patch and apply all pass here,
/// as Kubernetes runs admission inside its storage's update.
pub async fn admit_update(registry: &Registry, info: &KindInfo, old: &Value, new: &Value) -> Result<(), Error> {
    let namespace = new["metadata"]["namespace"].as_str().unwrap_or_default();
    if !info.namespaced || namespace.is_empty() {
        return Ok(());
    }
    resource_quota::charge_update(registry, info, namespace, old, new).await
}

/// The object being admitted: the bytes as sent, decoded once when a step
/// needs to look into them.
pub(crate) struct Admitted<'a> {
    sent: &'a [u8],
    value: Option<Value>,
    changed: bool,
}

impl Admitted<'_> {
    /// The request's namespace, else the object's own.
    fn namespace(&self, requested: &str) -> String {
        if !requested.is_empty() {
            return requested.to_string();
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Meta {
            namespace: String,
        }
        #[derive(serde::Deserialize)]
        struct Named {
            #[serde(default)]
            metadata: Meta,
        }
        serde_json::from_slice::<Named>(self.sent).map(|n| n.metadata.namespace).unwrap_or_default()
    }

    fn sent(&self) -> &[u8] {
        self.sent
    }

    /// The object, decoded. A body that does not decode is the registry's
    /// to refuse, with the field named: steps pass over it.
    fn value(&mut self) -> Option<&Value> {
        if self.value.is_none() {
            self.value = serde_json::from_slice(self.sent).ok();
        }
        self.value.as_ref()
    }

    /// The object, to change.
    fn value_mut(&mut self) -> Option<&mut Value> {
        self.value()?;
        self.changed = true;
        self.value.as_mut()
    }

    fn into_bytes(self) -> Result<Option<Vec<u8>>, Error> {
        match (self.changed, self.value) {
            (true, Some(value)) => {
                Ok(Some(serde_json::to_vec(&value).map_err(|source| Error::BadJson { what: "the object", source })?))
            }
            _ => Ok(None),
        }
    }
}
