//! Node lifecycle: watches node heartbeats (Leases named after the node in
//! kube-node-lease) and marks nodes whose heartbeat stopped.
//!
//! A node whose last heartbeat is older than `--node-monitor-grace-period`
//! gets its Ready condition set to Unknown (reason NodeStatusUnknown) and the
//! taint `node.kubernetes.io/unreachable:NoExecute`; when heartbeats resume
//! the taint goes (the kubelet sets Ready=True itself). A node whose kubelet
//! reports Ready=False gets `node.kubernetes.io/not-ready:NoExecute`. Pods
//! on tainted nodes are the taint-eviction controller's business; until
//! they go, the pods of an unreachable node are marked Ready=False (as
//! Kubernetes' MarkPodsNotReady does), so Services stop sending them traffic
//! at once rather than after the eviction.
//!
//! The last heartbeat is the latest of the lease's renewTime, the Ready
//! condition's lastHeartbeatTime, the node's creation and this controller's
//! start, so a restarted controller-manager gives every node a full grace
//! period before judging it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use skiff_client::{Action, Client, EventRecorder, EventType, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util::{self, millis};
use skiff_api::well_known::NODE_LEASE_NAMESPACE;
use skiff_api::well_known::{NOT_READY_TAINT, UNREACHABLE_TAINT};

pub struct NodeLifecycleController {
    client: Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    grace: Duration,
    started_ms: i64,
    recorder: EventRecorder,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.nodes, move |ev| queue.add(ev.key()));
    }
    {
        // A lease is named after its node.
        let queue = queue.clone();
        w.on_events(&ctx.caches.node_leases, move |ev| {
            if let Some(name) = ev.object().metadata.name.clone() {
                queue.add(name);
            }
        });
    }
    let controller = NodeLifecycleController {
        client: ctx.client.clone(),
        nodes: ctx.caches.nodes.clone(),
        leases: ctx.caches.node_leases.clone(),
        pods: ctx.caches.pods.clone(),
        grace: ctx.node_monitor_grace_period,
        started_ms: millis(&util::now()),
        recorder: EventRecorder::new(ctx.client.clone(), "node-controller"),
    };
    w.run(ctx, controller, queue);
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key && t.effect == "NoExecute"))
}

impl Reconcile for NodeLifecycleController {
    const NAME: &'static str = "nodelifecycle";
    type Error = Error;

    async fn reconcile(&self, name: &str) -> Result<Action> {
        let Some(node) = self.nodes.get(name) else { return Ok(Action::done()) };
        let lease_renewed = self
            .leases
            .get(&format!("{NODE_LEASE_NAMESPACE}/{name}"))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| millis(&t.0)));
        let ready = ready_condition(&node);
        let last = [
            lease_renewed,
            ready.and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| millis(&t.0)),
            node.metadata.creation_timestamp.as_ref().map(|t| millis(&t.0)),
            Some(self.started_ms),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let grace_ms = self.grace.as_millis() as i64;
        let now_ms = millis(&util::now());
        let ready_status = ready.map(|c| c.status.as_str()).unwrap_or("Unknown");

        if now_ms - last > grace_ms {
            // The taint is written over the status update's result: the
            // cached copy is stale by then and would lose with a conflict.
            let node = if ready.is_none_or(|c| c.status != "Unknown") {
                Arc::new(self.mark_unknown(&node).await?)
            } else {
                node
            };
            self.set_taints(&node, Some(UNREACHABLE_TAINT)).await?;
            self.mark_pods_not_ready(name).await?;
            return Ok(Action::done());
        }
        let wanted = (ready_status == "False").then_some(NOT_READY_TAINT);
        self.set_taints(&node, wanted).await?;
        // Heartbeats are events, their absence is not: look again when this
        // one would go stale.
        Ok(Action::requeue(Duration::from_millis((last + grace_ms - now_ms).max(0) as u64 + 100)))
    }
}

impl NodeLifecycleController {
    /// Sets Ready=Unknown; returns the node as stored after that.
    async fn mark_unknown(&self, node: &Node) -> Result<Node> {
        let mut updated = node.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let now = util::now_time();
        let message = "Kubelet stopped posting node status.".to_string();
        match conditions.iter_mut().find(|c| c.type_ == "Ready") {
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some(message);
                c.last_transition_time = Some(now);
            }
            None => conditions.push(NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some(message),
                last_transition_time: Some(now),
                ..Default::default()
            }),
        }
        let name = util::name(&node.metadata).to_string();
        let stored = self
            .client
            .api::<Node>("")
            .update_status(&updated)
            .await
            .map_err(|source| Error::UpdateStatus { kind: "Node", key: name.clone(), source })?;
        tracing::info!(node = %name, "node stopped sending heartbeats: Ready=Unknown");
        let msg = format!("Node {name} status is now: NodeNotReady");
        self.recorder.report(node, EventType::Normal, "NodeNotReady", &msg).await;
        Ok(stored)
    }

    /// Sets Ready=False on every pod of node `name` that still says True.
    async fn mark_pods_not_ready(&self, name: &str) -> Result<()> {
        let on_node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name);
        for pod in self.pods.list().into_iter().filter(|p| on_node(p)) {
            let mut updated = (*pod).clone();
            let conditions = updated.status.as_mut().and_then(|s| s.conditions.as_mut());
            let Some(ready) = conditions.and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready" && c.status == "True"))
            else {
                continue;
            };
            ready.status = "False".into();
            ready.reason = Some("NodeNotReady".into());
            ready.message = Some(format!("Node {name} is not responding"));
            ready.last_transition_time = Some(util::now_time());
            let key = skiff_client::key_of(&*pod);
            let api = self.client.api::<Pod>(pod.metadata.namespace.as_deref().unwrap_or_default());
            match api.update_status(&updated).await {
                Ok(_) => tracing::info!(pod = %key, node = name, "marked pod not ready: its node is unreachable"),
                // Changed or gone meanwhile: the next reconcile sees the new one.
                Err(e) if e.is_conflict() || e.is_not_found() => {}
                Err(source) => return Err(Error::UpdateStatus { kind: "Pod", key, source }),
            }
        }
        Ok(())
    }

    /// Makes `wanted` the node's only lifecycle taint (unreachable or
    /// not-ready), keeping every other taint and the time a kept one was added.
    async fn set_taints(&self, node: &Node, wanted: Option<&str>) -> Result<()> {
        let lifecycle = [UNREACHABLE_TAINT, NOT_READY_TAINT];
        let present_ok = wanted.is_none_or(|w| has_taint(node, w));
        let stray = lifecycle.iter().any(|k| Some(*k) != wanted && has_taint(node, k));
        if present_ok && !stray {
            return Ok(());
        }
        let mut updated = node.clone();
        let spec = updated.spec.get_or_insert_with(Default::default);
        let taints = spec.taints.get_or_insert_with(Vec::new);
        taints.retain(|t| {
            !(lifecycle.contains(&t.key.as_str()) && t.effect == "NoExecute" && Some(t.key.as_str()) != wanted)
        });
        if let Some(key) = wanted {
            if !taints.iter().any(|t| t.key == key && t.effect == "NoExecute") {
                taints.push(Taint {
                    key: key.into(),
                    effect: "NoExecute".into(),
                    time_added: Some(util::now_time()),
                    value: None,
                });
            }
        }
        if taints.is_empty() {
            spec.taints = None;
        }
        let name = util::name(&node.metadata).to_string();
        self.client.api::<Node>("").update(&updated).await.map_err(|source| Error::Update {
            kind: "Node",
            key: name.clone(),
            source,
        })?;
        tracing::info!(node = %name, taint = ?wanted, "node taints updated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{json, Value};
    use skiff_client::fake_server::{eventually, FakeApiserver, Running};

    use super::*;

    const GRACE: Duration = Duration::from_secs(40);
    const HOUR: i64 = 3600;

    /// A time `seconds` before now, as the API writes it.
    fn ago(seconds: i64) -> Value {
        let then = Timestamp::from_second(util::now().as_second() - seconds).unwrap();
        serde_json::to_value(Time(then)).unwrap()
    }

    fn node(name: &str, ready: &str, heartbeat: i64, taints: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "creationTimestamp": ago(2 * HOUR)},
               "spec": {"taints": taints},
               "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": ago(heartbeat)}]}})
    }

    fn lease(node: &str, renewed: i64) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE},
               "spec": {"holderIdentity": node, "renewTime": ago(renewed)}})
    }

    fn ready_pod(name: &str, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    /// The controller over a fake apiserver holding `objects`, started an
    /// hour ago (so every node has had its full grace period).
    async fn world(objects: &[Value]) -> (Running, NodeLifecycleController) {
        let server = FakeApiserver::start().await;
        for o in objects {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
            server.client.create(o["kind"].as_str().unwrap(), ns, o).await.unwrap();
        }
        let controller = NodeLifecycleController {
            client: server.client.clone(),
            nodes: server.store("").await,
            leases: server.store(NODE_LEASE_NAMESPACE).await,
            pods: server.store("").await,
            grace: GRACE,
            started_ms: millis(&util::now()) - HOUR * 1000,
            recorder: EventRecorder::new(server.client.clone(), "node-controller"),
        };
        (server, controller)
    }

    /// Reconciles `name` until it succeeds, as the controller's runner
    /// retries a failed key, letting the caches catch up between tries.
    async fn settle(server: &Running, controller: &NodeLifecycleController, name: &str) -> Action {
        for _ in 0..3 {
            match controller.reconcile(name).await {
                Ok(action) => return action,
                Err(error) => tracing::debug!(%error, "retrying"),
            }
            let node = server.client.api::<Node>("").get(name).await.unwrap();
            let version = node.metadata.resource_version;
            eventually("the Node cache to catch up", || {
                controller.nodes.get(name).and_then(|n| n.metadata.resource_version.clone()) == version
            })
            .await;
        }
        panic!("node {name} never settled");
    }

    async fn stored_node(server: &Running, name: &str) -> Node {
        server.client.api::<Node>("").get(name).await.unwrap()
    }

    fn taint_keys(node: &Node) -> Vec<String> {
        node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default().into_iter().map(|t| t.key).collect()
    }

    fn pod_ready(pod: &Pod) -> String {
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        conditions.into_iter().find(|c| c.type_ == "Ready").map(|c| c.status).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_silent_node_goes_unknown_and_unreachable_and_its_pods_not_ready() {
        let keep = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        let (server, controller) = world(&[
            node("silent", "True", HOUR, keep),
            lease("silent", HOUR),
            ready_pod("on-silent", "silent"),
            ready_pod("elsewhere", "other"),
        ])
        .await;

        // In one reconcile: the taint must not lose a conflict with the
        // status write before it.
        assert_eq!(controller.reconcile("silent").await.expect("first reconcile"), Action::done());

        let silent = stored_node(&server, "silent").await;
        let ready = ready_condition(&silent).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("Unknown", Some("NodeStatusUnknown")));
        assert_eq!(taint_keys(&silent), ["dedicated", UNREACHABLE_TAINT], "other taints are kept");
        let pods = server.client.api::<Pod>("default");
        assert_eq!(pod_ready(&pods.get("on-silent").await.unwrap()), "False");
        assert_eq!(pod_ready(&pods.get("elsewhere").await.unwrap()), "True");
    }

    #[tokio::test]
    async fn a_fresh_lease_keeps_a_node_and_a_not_ready_kubelet_gets_the_not_ready_taint() {
        let (server, controller) =
            world(&[node("fresh", "True", HOUR, json!([])), lease("fresh", 0), node("sick", "False", 0, json!([]))])
                .await;

        let fresh = settle(&server, &controller, "fresh").await;
        let sick = settle(&server, &controller, "sick").await;

        assert!(fresh.requeue_after().is_some_and(|after| after <= GRACE + Duration::from_secs(1)), "{fresh:?}");
        assert!(sick.requeue_after().is_some(), "{sick:?}");
        assert_eq!(taint_keys(&stored_node(&server, "fresh").await), Vec::<String>::new());
        assert_eq!(ready_condition(&stored_node(&server, "fresh").await).unwrap().status, "True");
        assert_eq!(taint_keys(&stored_node(&server, "sick").await), [NOT_READY_TAINT]);
    }

    #[tokio::test]
    async fn the_unreachable_taint_goes_when_heartbeats_resume() {
        let unreachable = json!([{"key": UNREACHABLE_TAINT, "effect": "NoExecute"}]);
        let (server, controller) = world(&[node("back", "True", 0, unreachable), lease("back", 0)]).await;

        settle(&server, &controller, "back").await;

        assert_eq!(taint_keys(&stored_node(&server, "back").await), Vec::<String>::new());
    }
}
