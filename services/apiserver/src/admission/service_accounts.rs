//! The ServiceAccount admission of a pod being created, as Kubernetes'
//! ServiceAccount admission plugin decides it: a pod that says nothing of
//! `automountServiceAccountToken` takes its ServiceAccount's setting, so an
//! account marked `automountServiceAccountToken: false` gets no token into
//! its pods unless a pod asks for one.

use serde_json::Value;

use super::Admitted;
use crate::registry::Registry;
use crate::Error;

/// Sets the pod's `automountServiceAccountToken` to its account's `false`
/// when the pod says nothing of it.
pub async fn admit_pod(registry: &Registry, namespace: &str, pod: &mut Admitted<'_>) -> Result<(), Error> {
    // Read only what decides, on every pod create; the whole pod is decoded
    // in the rare case that it changes.
    let Ok(decides) = serde_json::from_slice::<Decides>(pod.sent()) else { return Ok(()) };
    if decides.spec.automount_service_account_token.is_some() {
        return Ok(());
    }
    let account = decides.spec.service_account_name.filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    // A missing account is not this step's to refuse: the pod runs without
    // a token, as the kubelet decides when it finds none.
    let account = match registry.get_value_cached("ServiceAccount", namespace, &account).await {
        Ok(account) => account,
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if account["automountServiceAccountToken"] != Value::Bool(false) {
        return Ok(());
    }
    if let Some(spec) = pod.value_mut().and_then(|v| v.get_mut("spec")).filter(|s| s.is_object()) {
        spec["automountServiceAccountToken"] = Value::Bool(false);
    }
    Ok(())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Decides {
    spec: DecidesSpec,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct DecidesSpec {
    service_account_name: Option<String>,
    automount_service_account_token: Option<bool>,
}
