//! The ServiceAccount admission of a pod being created, as Kubernetes'
//! ServiceAccount admission plugin decides it: a pod that says nothing of
//! `automountServiceAccountToken` takes its ServiceAccount's setting, so an
//! account marked `automountServiceAccountToken: false` gets no token into
//! its pods unless a pod asks for one.

use serde_json::Value;

use crate::registry::Registry;
use crate::Error;

/// The pod to store for a create of `object` in `namespace`; None when it
/// is stored as it is (another kind, or nothing to decide).
pub async fn admit_pod(
    registry: &Registry,
    kind: &str,
    namespace: &str,
    object: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    if kind != "Pod" {
        return Ok(None);
    }
    // Read only what decides, on every pod create; the whole pod is decoded
    // in the rare case that it changes.
    // A body that does not even parse this far is validation's to refuse,
    // with the field named.
    let Ok(decides) = serde_json::from_slice::<Decides>(object) else { return Ok(None) };
    if decides.spec.automount_service_account_token.is_some() {
        return Ok(None);
    }
    let account = decides.spec.service_account_name.filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let namespace = decides.metadata.namespace.filter(|n| !n.is_empty()).unwrap_or_else(|| namespace.into());
    // A missing account is not this step's to refuse: the pod runs without
    // a token, as the kubelet decides when it finds none.
    let account = match registry.get_value_cached("ServiceAccount", &namespace, &account).await {
        Ok(account) => account,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if account["automountServiceAccountToken"] != Value::Bool(false) {
        return Ok(None);
    }
    let mut pod: Value =
        serde_json::from_slice(object).map_err(|source| Error::BadJson { what: "the object", source })?;
    if !pod["spec"].is_object() {
        return Ok(None);
    }
    pod["spec"]["automountServiceAccountToken"] = Value::Bool(false);
    Ok(Some(serde_json::to_vec(&pod).map_err(|source| Error::BadJson { what: "the object", source })?))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Decides {
    metadata: DecidesMeta,
    spec: DecidesSpec,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct DecidesMeta {
    namespace: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DecidesSpec {
    service_account_name: Option<String>,
    automount_service_account_token: Option<bool>,
}
