//! Taint eviction (Kubernetes' taint manager): pods on a node with a
//! NoExecute taint they do not tolerate are deleted, so their controllers
//! recreate them elsewhere.
//!
//! A pod that tolerates the taint for `tolerationSeconds` is deleted that
//! long after the taint's `timeAdded`; one that tolerates it without a limit
//! stays. Pods with no toleration for the unreachable or not-ready taints get
//! the defaults (`--default-unreachable-toleration-seconds`,
//! `--default-not-ready-toleration-seconds`), which Kubernetes adds to every
//! pod at admission; for any other NoExecute taint they go at once.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use skiff_client::{key_of, Action, Client, EventRecorder, EventType, InformerEvent, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util::{self, millis};
use skiff_api::well_known::{NOT_READY_TAINT, UNREACHABLE_TAINT};

pub struct TaintEvictionController {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    default_unreachable_seconds: i64,
    default_not_ready_seconds: i64,
    recorder: EventRecorder,
}

fn no_execute(node: &Node) -> Vec<&Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().filter(|t| t.effect == "NoExecute").collect())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        let nodes = ctx.caches.nodes.clone();
        w.on_events(&ctx.caches.pods, move |ev| {
            let pod = ev.object();
            if matches!(ev, InformerEvent::Deleted(_)) {
                return;
            }
            let tainted = node_of(pod).and_then(|n| nodes.get(n)).is_some_and(|n| !no_execute(&n).is_empty());
            if tainted {
                queue.add(key_of(pod.as_ref()));
            }
        });
    }
    {
        let queue = queue.clone();
        let pods = ctx.caches.pods.clone();
        w.on_events(&ctx.caches.nodes, move |ev| {
            let changed = match &ev {
                InformerEvent::Added(n) => !no_execute(n).is_empty(),
                InformerEvent::Modified { old, new } => no_execute(old) != no_execute(new),
                InformerEvent::Deleted(_) => false,
            };
            if !changed {
                return;
            }
            let name = ev.object().metadata.name.clone().unwrap_or_default();
            for pod in pods.list() {
                if node_of(&pod) == Some(name.as_str()) {
                    queue.add(key_of(pod.as_ref()));
                }
            }
        });
    }
    let controller = TaintEvictionController {
        client: ctx.client.clone(),
        pods: ctx.caches.pods.clone(),
        nodes: ctx.caches.nodes.clone(),
        default_unreachable_seconds: ctx.default_unreachable_toleration_seconds,
        default_not_ready_seconds: ctx.default_not_ready_toleration_seconds,
        recorder: EventRecorder::new(ctx.client.clone(), "taint-eviction-controller"),
    };
    w.run(ctx, controller, queue);
}

pub use skiff_api::scheduling::tolerates;

impl TaintEvictionController {
    /// When `pod` must leave because of `taint`, in ms since the epoch;
    /// `None` if it may stay for good.
    fn evict_at(&self, pod: &Pod, taint: &Taint, now_ms: i64) -> Option<i64> {
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
        let seconds = match tolerations.iter().find(|t| tolerates(t, taint)) {
            Some(t) => t.toleration_seconds?,
            None if taint.key == UNREACHABLE_TAINT => self.default_unreachable_seconds,
            None if taint.key == NOT_READY_TAINT => self.default_not_ready_seconds,
            None => 0,
        };
        let added = taint.time_added.as_ref().map_or(now_ms, |t| millis(&t.0));
        Some(deadline_ms(added, seconds))
    }
}

/// `seconds` after `added_ms`, in ms. A client's tolerationSeconds may be
/// anything: saturating keeps a huge one a wait for ever, where wrapping
/// would turn it negative and evict at once.
fn deadline_ms(added_ms: i64, seconds: i64) -> i64 {
    added_ms.saturating_add(seconds.max(0).saturating_mul(1000))
}

impl Reconcile for TaintEvictionController {
    const NAME: &'static str = "tainteviction";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(pod) = self.pods.get(key) else { return Ok(Action::done()) };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(Action::done());
        }
        let Some(node) = node_of(&pod).and_then(|n| self.nodes.get(n)) else { return Ok(Action::done()) };
        let now_ms = millis(&util::now());
        let Some((deadline, taint)) = no_execute(&node)
            .into_iter()
            .filter_map(|t| Some((self.evict_at(&pod, t, now_ms)?, t)))
            .min_by_key(|(at, _)| *at)
        else {
            return Ok(Action::done());
        };
        if deadline > now_ms {
            return Ok(Action::requeue(Duration::from_millis((deadline - now_ms) as u64)));
        }
        let node_name = util::name(&node.metadata);
        tracing::info!(pod = key, node = node_name, taint = %taint.key, "evicting pod from tainted node");
        // The Event first, as Kubernetes' taint manager does: whoever sees
        // the pod go finds why.
        let msg = format!("Marking for deletion Pod {key}");
        self.recorder.report(pod.as_ref(), EventType::Normal, "TaintManagerEviction", &msg).await;
        match self.client.api::<Pod>(util::namespace(&pod.metadata)).delete(util::name(&pod.metadata)).await {
            Ok(_) => Ok(Action::done()),
            Err(e) if e.is_not_found() => Ok(Action::done()),
            Err(source) => Err(Error::Delete { kind: "Pod".into(), key: key.into(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;

    fn taint(key: &str) -> Taint {
        Taint { key: key.into(), effect: "NoExecute".into(), value: None, time_added: None }
    }

    fn toleration(key: Option<&str>, operator: &str, effect: Option<&str>, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(operator.into()),
            effect: effect.map(Into::into),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn a_huge_toleration_waits_for_ever_rather_than_wrapping() {
        let now = 1_700_000_000_000;
        assert_eq!(deadline_ms(now, 5), now + 5000);
        assert_eq!(deadline_ms(now, -5), now, "a negative toleration is none");
        assert_eq!(deadline_ms(now, i64::MAX), i64::MAX);
        assert_eq!(deadline_ms(now, i64::MAX / 1000), i64::MAX);
    }

    #[test]
    fn toleration_matching() {
        let t = taint(UNREACHABLE_TAINT);
        assert!(tolerates(&toleration(Some(UNREACHABLE_TAINT), "Exists", Some("NoExecute"), None), &t));
        assert!(tolerates(&toleration(None, "Exists", None, None), &t), "empty key with Exists tolerates all");
        assert!(!tolerates(&toleration(Some("other"), "Exists", None, None), &t));
        assert!(!tolerates(&toleration(Some(UNREACHABLE_TAINT), "Exists", Some("NoSchedule"), None), &t));
        assert!(tolerates(&toleration(Some(UNREACHABLE_TAINT), "Equal", None, None), &t), "equal empty values");
    }
}
