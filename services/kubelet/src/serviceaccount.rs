//! The ServiceAccount token every pod gets, as Kubernetes' kubelet projects
//! it: a token bound to the pod (TokenRequest), the cluster CA and the
//! namespace, as files under /var/run/secrets/kubernetes.io/serviceaccount
//! in each container. Tokens are kept per pod and asked for again once 80%
//! of their life has passed, so a pod that runs for days always holds a
//! valid one; a pod opts out with `automountServiceAccountToken: false`.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use skiff_api::proto::TokenRequest;
use skiff_client::Client;

use crate::Error;

/// Where the files appear in containers.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// What Kubernetes' kubelet asks for: an hour and a few seconds.
const EXPIRATION_SECONDS: i64 = 3607;

/// The files of one pod's projection: token, ca.crt, namespace.
pub struct Projection {
    pub files: Vec<(&'static str, Vec<u8>)>,
}

pub struct TokenManager {
    client: Client,
    /// The cluster CA (PEM) pods verify the apiserver with.
    ca: Vec<u8>,
    /// By pod UID: the token, when it was issued and when it expires.
    tokens: Mutex<HashMap<String, Issued>>,
}

#[derive(Clone)]
struct Issued {
    token: String,
    issued: i64,
    expires: i64,
}

impl Issued {
    /// Past 80% of its life: ask for a new one.
    fn needs_refresh(&self, now: i64) -> bool {
        now >= self.issued + (self.expires - self.issued) * 4 / 5
    }
}

/// Whether `pod` gets the token: unless it says not to.
pub fn wants_token(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.automount_service_account_token) != Some(false)
}

impl TokenManager {
    pub fn new(client: Client, ca: Vec<u8>) -> Self {
        Self { client, ca, tokens: Mutex::default() }
    }

    /// The pod's files, with a token issued for it (a fresh one when the
    /// kept one is old).
    pub async fn projection(&self, pod: &Pod) -> Result<Projection, Error> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let token = self.token(pod, &namespace).await?;
        Ok(Projection {
            files: vec![
                ("token", token.into_bytes()),
                ("ca.crt", self.ca.clone()),
                ("namespace", namespace.into_bytes()),
            ],
        })
    }

    async fn token(&self, pod: &Pod, namespace: &str) -> Result<String, Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        let kept = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&uid).cloned();
        if let Some(kept) = kept.filter(|k| !k.needs_refresh(now)) {
            return Ok(kept.token);
        }
        let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).filter(|s| !s.is_empty());
        let request = TokenRequest {
            namespace: namespace.to_string(),
            service_account: account.unwrap_or_else(|| "default".into()),
            audiences: Vec::new(),
            expiration_seconds: EXPIRATION_SECONDS,
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: uid.clone(),
        };
        let what = format!("the ServiceAccount token of {namespace}/{}", request.service_account);
        let reply = self
            .client
            .objects()
            .create_token(request)
            .await
            .map_err(|status| Error::Volume(format!("{what}: {}", status.message())))?
            .into_inner();
        let issued = Issued { token: reply.token, issued: now, expires: reply.expiration_timestamp };
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, issued.clone());
        Ok(issued.token)
    }

    /// Drops what is kept for pods no longer on this node.
    pub fn forget(&self, uid: &str) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_past_four_fifths_of_its_life() {
        let t = Issued { token: String::new(), issued: 1000, expires: 2000 };
        assert!(!t.needs_refresh(1799));
        assert!(t.needs_refresh(1800));
    }

    #[test]
    fn pods_get_the_token_unless_they_opt_out() {
        let pod = |automount: Option<bool>| Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                automount_service_account_token: automount,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(wants_token(&pod(None)));
        assert!(wants_token(&pod(Some(true))));
        assert!(!wants_token(&pod(Some(false))));
    }
}
