//! Old CertificateSigningRequests are deleted, as Kubernetes' csrcleaner
//! does: a request is a one-time exchange, and a cluster whose nodes renew
//! their certificates would otherwise pile them up.
//!
//! - approved, denied or failed: an hour after that condition was set;
//! - pending: a day after it was made;
//! - issued: when its certificate ends, if that is sooner.
//!
//! Each request is looked at when it changes and again at its deadline.

use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use skiff_client::{Action, Client, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};

const KIND: &str = "CertificateSigningRequest";
const PENDING_EXPIRATION: SignedDuration = SignedDuration::from_hours(24);
const DECIDED_EXPIRATION: SignedDuration = SignedDuration::from_hours(1);

pub struct CsrCleaner {
    client: Client,
    requests: Store<CertificateSigningRequest>,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.certificate_requests, move |ev| queue.add(ev.key()));
    }
    let controller = CsrCleaner { client: ctx.client.clone(), requests: ctx.caches.certificate_requests.clone() };
    w.run(ctx, controller, queue);
}

impl Reconcile for CsrCleaner {
    const NAME: &'static str = "csrcleaner";
    type Error = Error;

    async fn reconcile(&self, name: &str) -> Result<Action> {
        let Some(csr) = self.requests.get(name) else { return Ok(Action::done()) };
        let now = skiff_api::clock::now();
        let Some(deadline) = deadline(&csr) else { return Ok(Action::done()) };
        if deadline > now {
            let left = Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO);
            return Ok(Action::requeue(left + Duration::from_secs(1)));
        }
        tracing::info!(csr = %name, "deleting an old certificate signing request");
        match self.client.delete(KIND, "", name).await {
            Ok(_) => Ok(Action::done()),
            Err(e) if e.is_not_found() => Ok(Action::done()),
            Err(source) => Err(Error::Delete { kind: KIND.into(), key: name.into(), source }),
        }
    }
}

/// When `csr` is to be deleted: the earlier of its certificate's end and
/// its condition's or creation's expiration; None for one without a
/// creation time.
fn deadline(csr: &CertificateSigningRequest) -> Option<Timestamp> {
    let status = csr.status.clone().unwrap_or_default();
    let ended = status.certificate.as_ref().and_then(|c| certificate_end(&c.0));
    let decided = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
        .filter_map(|c| c.last_update_time.as_ref().or(c.last_transition_time.as_ref()).map(|t| t.0))
        .min();
    let expires = match decided {
        Some(at) => at.checked_add(DECIDED_EXPIRATION).ok(),
        None => csr.metadata.creation_timestamp.as_ref()?.0.checked_add(PENDING_EXPIRATION).ok(),
    };
    [ended, expires].into_iter().flatten().min()
}

fn certificate_end(pem: &[u8]) -> Option<Timestamp> {
    let der = skiff_pki::pem_certificates(std::str::from_utf8(pem).ok()?).ok()?;
    Timestamp::from_second(skiff_pki::not_after(der.first()?).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequestCondition, CertificateSigningRequestStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn csr(created: Timestamp, condition: Option<(&str, Timestamp)>) -> CertificateSigningRequest {
        let mut csr = CertificateSigningRequest::default();
        csr.metadata.creation_timestamp = Some(Time(created));
        csr.status = condition.map(|(kind, at)| CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: kind.into(),
                status: "True".into(),
                last_update_time: Some(Time(at)),
                ..Default::default()
            }]),
            ..Default::default()
        });
        csr
    }

    #[test]
    fn pending_requests_last_a_day_decided_ones_an_hour() {
        let t: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(deadline(&csr(t, None)), Some(t + SignedDuration::from_hours(24)));
        let decided = t + SignedDuration::from_mins(5);
        for kind in ["Approved", "Denied", "Failed"] {
            assert_eq!(
                deadline(&csr(t, Some((kind, decided)))),
                Some(decided + SignedDuration::from_hours(1)),
                "{kind}"
            );
        }
        assert_eq!(deadline(&CertificateSigningRequest::default()), None);
    }

    #[test]
    fn an_issued_certificate_goes_when_it_ends() {
        let ca = skiff_pki::Ca::generate("test-ca").unwrap();
        let names = vec!["n1".to_string()];
        let ended = ca.issue(&skiff_pki::Usage::Server { names: &names }, time::Duration::seconds(-30)).unwrap();
        let now = skiff_api::clock::now();
        let mut request = csr(now, Some(("Approved", now)));
        request.status.as_mut().unwrap().certificate = Some(k8s_openapi::ByteString(ended.cert_pem.into_bytes()));
        assert!(deadline(&request).unwrap() <= now);
        let fresh = ca.issue(&skiff_pki::Usage::Server { names: &names }, time::Duration::hours(2)).unwrap();
        request.status.as_mut().unwrap().certificate = Some(k8s_openapi::ByteString(fresh.cert_pem.into_bytes()));
        assert_eq!(deadline(&request), Some(now + SignedDuration::from_hours(1)));
    }
}
