//! ServiceAccounts, after Kubernetes' serviceaccounts controller: every
//! namespace that is not being deleted has a ServiceAccount `default`, the
//! one its pods run as unless they name another. A deleted one comes back.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use serde_json::json;
use skiff_client::{Action, Client, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};

/// The ServiceAccount every namespace gets.
pub const DEFAULT: &str = "default";

pub struct ServiceAccountController {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.namespaces, move |ev| queue.add(ev.key()));
    }
    {
        // A `default` ServiceAccount deleted: its namespace is looked at again.
        let queue = queue.clone();
        w.on_events(&ctx.caches.service_accounts, move |ev| {
            let account = ev.object();
            if account.metadata.name.as_deref() == Some(DEFAULT) {
                queue.add(account.metadata.namespace.clone().unwrap_or_default());
            }
        });
    }
    let controller = ServiceAccountController {
        client: ctx.client.clone(),
        namespaces: ctx.caches.namespaces.clone(),
        accounts: ctx.caches.service_accounts.clone(),
    };
    w.run(ctx, controller, queue);
}

impl Reconcile for ServiceAccountController {
    const NAME: &'static str = "serviceaccount";
    type Error = Error;

    async fn reconcile(&self, namespace: &str) -> Result<Action> {
        let Some(ns) = self.namespaces.get(namespace) else { return Ok(Action::done()) };
        let terminating = ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if terminating || self.accounts.get(&format!("{namespace}/{DEFAULT}")).is_some() {
            return Ok(Action::done());
        }
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT}});
        match self.client.create("ServiceAccount", namespace, &account).await {
            Ok(_) => tracing::info!(namespace, "created ServiceAccount default"),
            // Created meanwhile, or the namespace began terminating.
            Err(e) if e.is_already_exists() => {}
            Err(e) if e.is_not_found() || e.is_precondition_failed() => {}
            Err(source) => return Err(Error::Create { kind: "ServiceAccount", namespace: namespace.into(), source }),
        }
        Ok(Action::done())
    }
}
