//! The Ingress reconciler: publishes the addresses the ingress serves on
//! in `status.loadBalancer`, and reports what keeps an Ingress from being
//! served (a missing Service or port, a bad annotation) as Warning Events,
//! once per problem rather than on every resync.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
use skiff_client::{Action, Client, EventRecorder, EventType, ObjectRef, Reconcile};

use crate::routes::backend_problems;
use crate::settings::Settings;
use crate::tls::secret_problems;
use crate::view::{serves, Stores};

pub const COMPONENT: &str = "skiff-ingress";

pub struct StatusReconciler {
    client: Client,
    stores: Stores,
    class: String,
    addresses: Vec<IpAddr>,
    recorder: EventRecorder,
    /// What was last reported per Ingress, so a problem is told once.
    reported: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl StatusReconciler {
    pub fn new(client: Client, stores: Stores, class: String, addresses: Vec<IpAddr>) -> Self {
        let recorder = EventRecorder::new(client.clone(), COMPONENT);
        Self { client, stores, class, addresses, recorder, reported: Mutex::default() }
    }

    fn desired_status(&self) -> IngressStatus {
        let ingress = self
            .addresses
            .iter()
            .map(|ip| IngressLoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() })
            .collect();
        IngressStatus { load_balancer: Some(IngressLoadBalancerStatus { ingress: Some(ingress) }) }
    }

    /// Problems not reported before; remembers them all as reported.
    fn new_problems(&self, key: &str, problems: BTreeSet<String>) -> Vec<String> {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let before = reported.insert(key.to_string(), problems.clone()).unwrap_or_default();
        problems.difference(&before).cloned().collect()
    }
}

impl Reconcile for StatusReconciler {
    const NAME: &'static str = "ingress";
    type Error = skiff_client::Error;

    async fn reconcile(&self, key: &str) -> Result<Action, Self::Error> {
        let served = self.stores.ingresses.get(key).filter(|ing| serves(&self.class, ing, &self.stores.classes));
        let Some(ing) = served else {
            self.reported.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
            return Ok(Action::done());
        };
        let backends = self.stores.with_lookups(|lookups| backend_problems(&ing, lookups));
        let (_, annotations) = Settings::from_annotations(ing.metadata.annotations.as_ref());
        let secrets = secret_problems(&ing, &|key| self.stores.secrets.get(key));
        let problems: BTreeSet<String> = backends
            .iter()
            .map(|p| format!("BackendUnavailable: {p}"))
            .chain(annotations.iter().map(|p| format!("InvalidAnnotation: {p}")))
            .chain(secrets.iter().map(|p| format!("InvalidCertificate: {p}")))
            .collect();
        let about = ObjectRef::of(ing.as_ref());
        for problem in self.new_problems(key, problems) {
            let (reason, message) = problem.split_once(": ").unwrap_or(("BackendUnavailable", &problem));
            tracing::warn!(ingress = key, reason, message, "ingress cannot be fully served");
            self.recorder.report_ref(&about, EventType::Warning, reason, message).await;
        }

        let desired = self.desired_status();
        if ing.status.as_ref() != Some(&desired) {
            let mut updated = (*ing).clone();
            updated.status = Some(desired);
            let namespace = ing.metadata.namespace.as_deref().unwrap_or_default();
            self.client.api::<Ingress>(namespace).update_status(&updated).await?;
        }
        Ok(Action::done())
    }
}
