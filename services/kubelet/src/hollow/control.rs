//! Failure injection through the ConfigMap `kube-system/hollow-control`:
//! `data.stopped` lists nodes (comma-separated) that act as if their host
//! died. See the module docs of [`super`].

use std::collections::HashSet;

use k8s_openapi::api::core::v1::ConfigMap;
use skiff_client::{Informer, ListParams};
use skiff_telemetry::Stop;
use tokio::sync::mpsc;

use super::{heartbeat, Fleet, Hollow};

pub const CONTROL_NAMESPACE: &str = "kube-system";
pub const CONTROL_NAME: &str = skiff_api::well_known::HOLLOW_CONTROL;
/// The key in the ConfigMap's data that lists stopped nodes.
pub const STOPPED_KEY: &str = "stopped";

/// Follows the ConfigMap until stopped: stops the nodes it lists and
/// revives the ones taken off the list (sending each revived node to
/// `revived`, so its pods are looked at again).
pub(super) async fn run(hollow: Hollow, revived: mpsc::UnboundedSender<usize>, stop: Stop) {
    let api = hollow.client.api::<ConfigMap>(CONTROL_NAMESPACE);
    let informer = Informer::new(api, ListParams::default().fields(&format!("metadata.name={CONTROL_NAME}")));
    let store = informer.store();
    let mut events = informer.subscribe();
    let key = format!("{CONTROL_NAMESPACE}/{CONTROL_NAME}");
    let follow = async {
        // The feed closes when the informer stops.
        while events.recv().await.is_some() {
            let control = store.get(&key);
            let wanted = stopped_names(control.as_deref());
            let (now_stopped, now_revived) = apply(&hollow.fleet, &wanted);
            hollow
                .metrics
                .nodes_stopped
                .set((0..hollow.fleet.len()).filter(|n| hollow.fleet.is_stopped(*n)).count() as i64);
            for node in now_stopped {
                tracing::info!(node = hollow.fleet.name(node), "node stopped through {CONTROL_NAME}");
            }
            for node in now_revived {
                tracing::info!(node = hollow.fleet.name(node), "node revived through {CONTROL_NAME}");
                // At once rather than at the node's next turn, so it shows
                // Ready again quickly; the heartbeat loops retry failures.
                if let Err(error) = heartbeat::report_status(&hollow, node).await {
                    tracing::warn!(error = format!("{error:#}"), "status of a revived node");
                }
                if let Err(error) = heartbeat::renew_lease(&hollow, node).await {
                    tracing::warn!(error = format!("{error:#}"), "lease of a revived node");
                }
                let _ = revived.send(node);
            }
        }
    };
    tokio::join!(informer.run(stop.raised()), follow);
}

/// The node names `data.stopped` lists (none without the ConfigMap).
fn stopped_names(control: Option<&ConfigMap>) -> HashSet<&str> {
    control
        .and_then(|cm| cm.data.as_ref())
        .and_then(|data| data.get(STOPPED_KEY))
        .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect())
        .unwrap_or_default()
}

/// Marks exactly the `wanted` nodes stopped; returns the nodes that just
/// stopped and those that just came back.
fn apply(fleet: &Fleet, wanted: &HashSet<&str>) -> (Vec<usize>, Vec<usize>) {
    let (mut stopped, mut revived) = (Vec::new(), Vec::new());
    for node in 0..fleet.len() {
        let stop = wanted.contains(fleet.name(node));
        if fleet.set_stopped(node, stop) {
            if stop {
                stopped.push(node);
            } else {
                revived.push(node);
            }
        }
    }
    (stopped, revived)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn control(stopped: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some(CONTROL_NAME.into()), ..Default::default() },
            data: Some([(STOPPED_KEY.to_string(), stopped.to_string())].into()),
            ..Default::default()
        }
    }

    fn fleet() -> Fleet {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: crate::Config,
        }
        Fleet::new(&Cli::parse_from(["skiff-kubelet", "--hollow-nodes=4"]).config).unwrap()
    }

    #[test]
    fn lists_are_comma_separated_and_forgiving() {
        let cm = control(" hollow-0001, ,hollow-0003,other-node");
        let mut names: Vec<_> = stopped_names(Some(&cm)).into_iter().collect();
        names.sort();
        assert_eq!(names, ["hollow-0001", "hollow-0003", "other-node"]);
        assert!(stopped_names(None).is_empty());
        assert!(stopped_names(Some(&ConfigMap::default())).is_empty());
    }

    #[test]
    fn stops_listed_nodes_and_revives_the_rest() {
        let f = fleet();
        let cm = control("hollow-0001,hollow-0003,not-ours");
        assert_eq!(apply(&f, &stopped_names(Some(&cm))), (vec![1, 3], vec![]));
        assert!(f.is_stopped(1) && f.is_stopped(3) && !f.is_stopped(0));
        // Same list again: nothing changes.
        assert_eq!(apply(&f, &stopped_names(Some(&cm))), (vec![], vec![]));
        let cm = control("hollow-0003,hollow-0000");
        assert_eq!(apply(&f, &stopped_names(Some(&cm))), (vec![0], vec![1]));
        // The ConfigMap deleted: everyone comes back.
        assert_eq!(apply(&f, &stopped_names(None)), (vec![], vec![0, 3]));
        assert!((0..4).all(|n| !f.is_stopped(n)));
    }
}
