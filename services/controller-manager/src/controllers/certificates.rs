//! Nodes' CertificateSigningRequests: approved, then signed with the
//! cluster CA (`--cluster-signing-cert-file`, `--cluster-signing-key-file`),
//! as Kubernetes' csrapproving and csrsigning controllers do for the kubelet
//! signers. Runs only when a signing key is given.
//!
//! Approved automatically:
//! - `kubernetes.io/kube-apiserver-client-kubelet`: a client certificate
//!   for `system:node:NAME` in `system:nodes`, asked by a bootstrap token
//!   (a node joining) or by that node itself (renewing). The apiserver
//!   checked the subject's shape when the request was created.
//! - `kubernetes.io/kubelet-serving`: the serving certificate of node NAME's
//!   API, asked by that node, naming only DNS names and IP addresses.
//!   (Kubernetes leaves these to an operator or another approver; skiff
//!   approves them so a joining node needs no hand on it. A node can ask
//!   for any address, so its API's certificate proves it is a node of this
//!   cluster, not which.)
//!
//! Everything else is left alone: another signer's, or an operator's to
//! approve (`skiffctl certificate approve`). A signed certificate is valid
//! for the request's `expirationSeconds` or a year, whichever is shorter.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::ByteString;
use skiff_api::well_known::{
    node_name, BOOTSTRAPPERS_GROUP, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, NODES_GROUP,
};
use skiff_client::{Action, Client, Reconcile, Store, WorkQueue};
use skiff_pki::csr::Signed;
use skiff_pki::Ca;

use super::{Context, Wiring};
use crate::error::{Error, Result};

const KIND: &str = "CertificateSigningRequest";

pub struct CertificateController {
    client: Client,
    requests: Store<CertificateSigningRequest>,
    ca: Arc<Ca>,
    /// `--cluster-signing-duration`: the longest validity given.
    max_validity: Duration,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let Some(ca) = ctx.signing_ca.clone() else { return };
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.certificate_requests, move |ev| queue.add(ev.key()));
    }
    let controller = CertificateController {
        client: ctx.client.clone(),
        requests: ctx.caches.certificate_requests.clone(),
        ca,
        max_validity: ctx.signing_duration,
    };
    w.run(ctx, controller, queue);
}

/// What happens next to a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Signed, denied or failed already, or not ours to decide or sign.
    Nothing,
    Approve {
        reason: &'static str,
        message: String,
    },
    Sign(Signed),
}

/// The decision for `csr`, from its spec and conditions alone.
pub fn next(csr: &CertificateSigningRequest) -> Next {
    let status = csr.status.as_ref();
    if status.and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty()) {
        return Next::Nothing;
    }
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let has = |kind: &str| conditions.is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"));
    if has("Denied") || has("Failed") {
        return Next::Nothing;
    }
    let signed = match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => Signed::Client,
        KUBELET_SERVING_SIGNER => Signed::Server,
        _ => return Next::Nothing,
    };
    if has("Approved") {
        return Next::Sign(signed);
    }
    match auto_approval(csr, signed) {
        Some(message) => Next::Approve { reason: "AutoApproved", message },
        None => Next::Nothing,
    }
}

/// Why `csr` may be approved without an operator, if it may.
fn auto_approval(csr: &CertificateSigningRequest, signed: Signed) -> Option<String> {
    let spec = &csr.spec;
    let requester = spec.username.as_deref().unwrap_or_default();
    let groups = spec.groups.as_deref().unwrap_or_default();
    let pem = String::from_utf8(spec.request.0.clone()).ok()?;
    let asked = skiff_pki::csr::parse(&pem).ok()?;
    let node = node_name(&asked.subject.user)?;
    if asked.subject.groups != [NODES_GROUP] {
        return None;
    }
    let is_the_node = requester == asked.subject.user && groups.iter().any(|g| g == NODES_GROUP);
    match signed {
        Signed::Client if groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP) => {
            Some(format!("node {node} joining with bootstrap token {requester}"))
        }
        Signed::Client if is_the_node => Some(format!("node {node} renewing its client certificate")),
        Signed::Server if is_the_node && !asked.names.is_empty() => {
            Some(format!("node {node}'s serving certificate for {}", asked.names.join(", ")))
        }
        _ => None,
    }
}

fn condition(kind: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    let now = skiff_api::clock::now_time();
    CertificateSigningRequestCondition {
        type_: kind.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

impl CertificateController {
    /// Writes `status` over `csr`'s; a conflict (someone else wrote first)
    /// retries from the cache's newer copy.
    async fn write_status(
        &self,
        csr: &CertificateSigningRequest,
        status: CertificateSigningRequestStatus,
    ) -> Result<()> {
        let mut updated = csr.clone();
        updated.status = Some(status);
        let name = csr.metadata.name.clone().unwrap_or_default();
        match self.client.api::<CertificateSigningRequest>("").update_status(&updated).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::UpdateStatus { kind: KIND, key: name, source }),
        }
    }

    fn sign(&self, csr: &CertificateSigningRequest, signed: Signed) -> std::result::Result<String, String> {
        let pem = String::from_utf8(csr.spec.request.0.clone()).map_err(|_| "the request is not PEM".to_string())?;
        let asked = csr.spec.expiration_seconds.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs);
        let validity = asked.unwrap_or(self.max_validity).min(self.max_validity);
        let validity = time::Duration::try_from(validity).map_err(|e| e.to_string())?;
        self.ca.sign(&pem, signed, validity).map_err(|e| e.to_string())
    }
}

impl Reconcile for CertificateController {
    const NAME: &'static str = "certificatesigningrequest";
    type Error = Error;

    async fn reconcile(&self, name: &str) -> Result<Action> {
        let Some(csr) = self.requests.get(name) else { return Ok(Action::done()) };
        let mut status = csr.status.clone().unwrap_or_default();
        match next(&csr) {
            Next::Nothing => return Ok(Action::done()),
            Next::Approve { reason, message } => {
                tracing::info!(csr = %name, %message, "approved");
                status.conditions.get_or_insert_with(Vec::new).push(condition("Approved", reason, message));
            }
            Next::Sign(signed) => match self.sign(&csr, signed) {
                Ok(certificate) => {
                    tracing::info!(csr = %name, signer = %csr.spec.signer_name, "signed");
                    status.certificate = Some(ByteString(certificate.into_bytes()));
                }
                Err(why) => {
                    tracing::warn!(csr = %name, %why, "could not sign");
                    let message = format!("signing failed: {why}");
                    status.conditions.get_or_insert_with(Vec::new).push(condition("Failed", "SignerFailed", message));
                }
            },
        }
        self.write_status(&csr, status).await?;
        Ok(Action::done())
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use serde_json::json;

    use super::*;

    fn request(
        cn: &str,
        groups: &[&str],
        signer: &str,
        requester: &str,
        requester_groups: &[&str],
    ) -> CertificateSigningRequest {
        let names = if signer == KUBELET_SERVING_SIGNER { vec!["10.0.0.7".to_string()] } else { vec![] };
        let pem = skiff_pki::csr::request(cn, groups, &names).unwrap().cert_pem;
        serde_json::from_value(json!({
            "metadata": {"name": "csr-1"},
            "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": signer,
                     "username": requester, "groups": requester_groups, "usages": ["client auth"]},
        }))
        .unwrap()
    }

    #[test]
    fn a_bootstrap_token_gets_a_node_client_certificate_approved() {
        let csr = request(
            "system:node:n1",
            &[NODES_GROUP],
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &[BOOTSTRAPPERS_GROUP],
        );
        assert!(matches!(next(&csr), Next::Approve { .. }));
    }

    #[test]
    fn a_node_renews_only_itself() {
        let own = request("system:node:n1", &[NODES_GROUP], KUBELET_CLIENT_SIGNER, "system:node:n1", &[NODES_GROUP]);
        assert!(matches!(next(&own), Next::Approve { .. }));
        let other = request("system:node:n2", &[NODES_GROUP], KUBELET_CLIENT_SIGNER, "system:node:n1", &[NODES_GROUP]);
        assert_eq!(next(&other), Next::Nothing);
    }

    #[test]
    fn a_node_gets_its_serving_certificate_approved() {
        let serving =
            request("system:node:n1", &[NODES_GROUP], KUBELET_SERVING_SIGNER, "system:node:n1", &[NODES_GROUP]);
        assert!(matches!(next(&serving), Next::Approve { .. }));
        let by_token = request(
            "system:node:n1",
            &[NODES_GROUP],
            KUBELET_SERVING_SIGNER,
            "system:bootstrap:x",
            &[BOOTSTRAPPERS_GROUP],
        );
        assert_eq!(next(&by_token), Next::Nothing, "a token gets a client certificate only");
    }

    #[test]
    fn others_wait_for_an_operator() {
        let alice = request("system:node:n1", &[NODES_GROUP], KUBELET_CLIENT_SIGNER, "alice", &["dev"]);
        assert_eq!(next(&alice), Next::Nothing);
        let masters = request(
            "system:node:n1",
            &["system:masters"],
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:x",
            &[BOOTSTRAPPERS_GROUP],
        );
        assert_eq!(next(&masters), Next::Nothing);
        let foreign = request(
            "system:node:n1",
            &[NODES_GROUP],
            "example.com/other",
            "system:bootstrap:x",
            &[BOOTSTRAPPERS_GROUP],
        );
        assert_eq!(next(&foreign), Next::Nothing);
    }

    #[test]
    fn approved_is_signed_and_signed_is_done() {
        let mut csr = request("system:node:n1", &[NODES_GROUP], KUBELET_CLIENT_SIGNER, "alice", &["dev"]);
        csr.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![condition("Approved", "ByHand", "ok".into())]),
            ..Default::default()
        });
        assert_eq!(next(&csr), Next::Sign(Signed::Client));
        csr.status.as_mut().unwrap().certificate = Some(ByteString(b"-----BEGIN CERTIFICATE-----".to_vec()));
        assert_eq!(next(&csr), Next::Nothing);
        let mut denied = request(
            "system:node:n1",
            &[NODES_GROUP],
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:x",
            &[BOOTSTRAPPERS_GROUP],
        );
        denied.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![condition("Denied", "ByHand", "no".into())]),
            ..Default::default()
        });
        assert_eq!(next(&denied), Next::Nothing);
    }
}
