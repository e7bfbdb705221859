//! Keeping hollow nodes alive: Lease renewals every heartbeat interval and
//! status writes every status interval, each node at its own offset in the
//! interval so the writes arrive as a steady stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use skiff_telemetry::Stop;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::registration::{node_object, node_status};
use super::{Hollow, IN_FLIGHT};
use crate::Error;

/// How often each node renews its Lease and rewrites its status.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub lease: Duration,
    pub status: Duration,
}

/// The finest step the spread loops take: below this, timer wake-ups would
/// cost more than batching a few nodes per step.
const MIN_STEP: Duration = Duration::from_millis(10);

/// Renews Leases and rewrites statuses until stopped. Stopped nodes are
/// skipped.
pub(super) async fn run(hollow: Hollow, timing: Timing, stop: Stop) {
    let leases = spread(hollow.clone(), timing.lease, stop.clone(), |h, node| async move {
        if let Err(error) = renew_lease(&h, node).await {
            h.metrics.errors.with_label_values(&["heartbeat"]).inc();
            tracing::warn!(error = format!("{error:#}"), "lease renewal failed");
        }
    });
    let statuses = spread(hollow, timing.status, stop, |h, node| async move {
        if let Err(error) = report_status(&h, node).await {
            h.metrics.errors.with_label_values(&["status"]).inc();
            tracing::warn!(error = format!("{error:#}"), "node status update failed");
        }
    });
    tokio::join!(leases, statuses);
}

/// How many steps one period is cut into: one per node, but no step
/// shorter than [`MIN_STEP`].
fn steps(nodes: usize, period: Duration) -> usize {
    let by_time = (period.as_nanos() / MIN_STEP.as_nanos()).max(1);
    nodes.min(usize::try_from(by_time).unwrap_or(usize::MAX)).max(1)
}

/// The nodes due at `step` of `steps`: every node comes up once a period.
fn due(nodes: usize, steps: usize, step: usize) -> impl Iterator<Item = usize> {
    (step..nodes).step_by(steps)
}

/// Calls `action` for each running node once every `period`, at the node's
/// own offset, with at most [`IN_FLIGHT`] calls outstanding. A slow
/// apiserver slows the loop down rather than piling up calls.
async fn spread<F, Fut>(hollow: Hollow, period: Duration, stop: Stop, action: F)
where
    F: Fn(Hollow, usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let nodes = hollow.fleet.len();
    let steps = steps(nodes, period);
    let step_len = period / u32::try_from(steps).unwrap_or(u32::MAX);
    // Registration has just written every node, so the first round waits.
    let mut ticker = tokio::time::interval_at(Instant::now() + step_len, step_len);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // Dropping the set on the way out aborts what is still in flight.
    let mut in_flight = JoinSet::new();
    let mut step = 0;
    loop {
        tokio::select! {
            _ = stop.raised() => return,
            _ = ticker.tick() => {}
        }
        while in_flight.try_join_next().is_some() {}
        for node in due(nodes, steps, step) {
            if hollow.fleet.is_stopped(node) {
                continue;
            }
            let permit = tokio::select! {
                _ = stop.raised() => return,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let call = action(hollow.clone(), node);
            in_flight.spawn(async move {
                call.await;
                drop(permit);
            });
        }
        step = (step + 1) % steps;
    }
}

/// Renews the node's Lease as a real kubelet does, and counts it.
pub(super) async fn renew_lease(hollow: &Hollow, node: usize) -> Result<(), Error> {
    crate::node::renew_lease(&hollow.client, hollow.fleet.name(node)).await?;
    hollow.metrics.heartbeats.inc();
    Ok(())
}

/// Writes the node's whole status (the kubelet owns it), with a fresh
/// heartbeat on every condition. A node deleted from the API is registered
/// again, as a kubelet does.
pub(super) async fn report_status(hollow: &Hollow, node: usize) -> Result<(), Error> {
    let fleet = &hollow.fleet;
    let name = fleet.name(node);
    // No resourceVersion: the status is the kubelet's alone, so this write
    // replaces whatever is there instead of racing to read it first.
    let obj =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": node_status(fleet, node)});
    match hollow.client.update_status("Node", "", &obj).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            tracing::info!(node = name, "node was deleted from the API, registering it again");
            match hollow.client.create("Node", "", &node_object(fleet, node)).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(source) => return Err(Error::RegisterNode { node: name.to_string(), source }),
            }
        }
        Err(source) => return Err(Error::UpdateNodeStatus { node: name.to_string(), source }),
    }
    hollow.metrics.status_updates.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_thousand_nodes_renew_a_few_at_a_time() {
        let steps = steps(5000, Duration::from_secs(10));
        assert_eq!(steps, 1000, "one step every 10ms");
        let mut seen = vec![0; 5000];
        for step in 0..steps {
            let batch: Vec<usize> = due(5000, steps, step).collect();
            assert_eq!(batch.len(), 5, "step {step}");
            batch.iter().for_each(|n| seen[*n] += 1);
        }
        assert!(seen.iter().all(|n| *n == 1), "each node exactly once a period");
    }

    #[test]
    fn few_nodes_get_a_step_each() {
        assert_eq!(steps(5, Duration::from_secs(1)), 5);
        assert_eq!(due(5, 5, 3).collect::<Vec<_>>(), [3]);
        assert_eq!(steps(1, Duration::from_millis(1)), 1);
        assert_eq!(steps(100, Duration::from_millis(100)), 10);
        assert_eq!(due(100, 10, 9).collect::<Vec<_>>(), [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
    }
}
