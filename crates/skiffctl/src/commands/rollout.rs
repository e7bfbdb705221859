//! `skiffctl rollout status|history|undo|pause|resume deploy/NAME` (or
//! `deployment NAME`): following and steering a Deployment's rollouts, as
//! kubectl does, from the Deployment and the ReplicaSets it owns.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use skiff_api::meta;
use skiff_client::{Client, ListParams, WatchEvent};

use super::{parse_duration, Globals};
use crate::merge::patch_between;
use crate::resource;
use crate::table::Table;
use skiff_api::well_known::{CHANGE_CAUSE_ANNOTATION, POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The deployment (deploy/web, or deployment web); `status` also takes
    /// a daemonset (ds/agent).
    #[arg(required = true, num_args = 1..=2)]
    pub target: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Watch a rollout until it finishes (or fails, or times out).
    Status {
        #[command(flatten)]
        target: Target,
        /// Give up after this long (5m, 30s); 0 waits for ever.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List the revisions of a deployment.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        #[command(flatten)]
        target: Target,
        /// The revision to go back to (0: the one before the current).
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Stop rolling out template changes.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Roll out template changes again.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let (target, what) = match &args.what {
        What::Status { target, .. } => (target, "status"),
        What::History { target } => (target, "history"),
        What::Undo { target, .. } => (target, "undo"),
        What::Pause { target } => (target, "pause"),
        What::Resume { target } => (target, "resume"),
    };
    let (info, name) = resource::parse_target(&target.target)?;
    let followed = what == "status" && matches!(info.kind, "DaemonSet" | "StatefulSet");
    if info.kind != "Deployment" && !followed {
        bail!("rollout {what} supports deployments (and status daemonsets and statefulsets) only, not {}", info.plural);
    }
    let client = globals.client()?;
    let ns = globals.namespace.as_str();
    let object_ref = resource::object_ref(info, &name);
    match args.what {
        What::Status { timeout, .. } => {
            let wait = follow(&client, info.kind, ns, &name);
            if timeout.is_zero() {
                wait.await
            } else {
                tokio::time::timeout(timeout, wait)
                    .await
                    .map_err(|_| anyhow!("timed out waiting for the rollout of {object_ref} after {timeout:?}"))?
            }
        }
        What::History { .. } => {
            let deploy = client.get(info.kind, ns, &name).await?;
            let rows = history(&owned_replica_sets(&client, ns, &deploy).await?);
            if rows.is_empty() {
                outln!("No rollout history found.");
                return Ok(());
            }
            outln!("{object_ref}");
            let mut table = Table::new(vec!["REVISION_ANNOTATION".into(), "CHANGE-CAUSE".into()]);
            table.rows.extend(rows.into_iter().map(|(rev, cause)| vec![rev.to_string(), cause]));
            out!("{}", table.render());
            Ok(())
        }
        What::Undo { to_revision, .. } => {
            let deploy = client.get(info.kind, ns, &name).await?;
            if deploy.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
                bail!("you cannot roll back a paused deployment; resume it first with `skiffctl rollout resume {object_ref}`");
            }
            let replica_sets = owned_replica_sets(&client, ns, &deploy).await?;
            let (revision, template) = undo_template(&name, &replica_sets, to_revision)?;
            let current = deploy.pointer("/spec/template").cloned().unwrap_or(Value::Null);
            if current == template {
                outln!("{object_ref} skipped rollback (current template already matches revision {revision})");
                return Ok(());
            }
            let patch = json!({"spec": {"template": patch_between(&current, &template)}});
            client.patch(info.kind, ns, &name, &patch).await?;
            outln!("{object_ref} rolled back");
            Ok(())
        }
        What::Pause { .. } => set_paused(&client, ns, &name, &object_ref, true).await,
        What::Resume { .. } => set_paused(&client, ns, &name, &object_ref, false).await,
    }
}

// === status ===

/// Where a rollout stands, as one line of kubectl's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Waiting(String),
    Done(String),
}

/// Reads a Deployment's or DaemonSet's progress.
pub fn progress(kind: &str, object: &Value) -> Result<Progress> {
    match kind {
        "DaemonSet" => daemon_set_progress(object),
        "StatefulSet" => stateful_set_progress(object),
        _ => deployment_progress(object),
    }
}

/// A DaemonSet's progress, in kubectl's words: every node's pod updated,
/// then available. Only RollingUpdate DaemonSets have a rollout to follow.
fn daemon_set_progress(ds: &Value) -> Result<Progress> {
    let name = meta::name(ds);
    let strategy = ds.pointer("/spec/updateStrategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate");
    if strategy != "RollingUpdate" {
        bail!("rollout status is only available for RollingUpdate strategy type");
    }
    let int = |p: &str| ds.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    if int("/metadata/generation") > int("/status/observedGeneration") {
        return Ok(Progress::Waiting("Waiting for daemon set spec update to be observed...".into()));
    }
    let (desired, updated, available) =
        (int("/status/desiredNumberScheduled"), int("/status/updatedNumberScheduled"), int("/status/numberAvailable"));
    let waiting =
        |what: String| Ok(Progress::Waiting(format!("Waiting for daemon set {name:?} rollout to finish: {what}")));
    if updated < desired {
        return waiting(format!("{updated} out of {desired} new pods have been updated..."));
    }
    if available < desired {
        return waiting(format!("{available} of {desired} updated pods are available..."));
    }
    Ok(Progress::Done(format!("daemon set {name:?} successfully rolled out")))
}

/// A StatefulSet's progress, in kubectl's words: every pod ready, then
/// every pod (above the partition) on the update revision.
fn stateful_set_progress(sts: &Value) -> Result<Progress> {
    let strategy = sts.pointer("/spec/updateStrategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate");
    if strategy != "RollingUpdate" {
        bail!("rollout status is only available for RollingUpdate strategy type");
    }
    let int = |p: &str| sts.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let text = |p: &str| sts.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let observed = int("/status/observedGeneration");
    if observed == 0 || int("/metadata/generation") > observed {
        return Ok(Progress::Waiting("Waiting for statefulset spec update to be observed...".into()));
    }
    let replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let (ready, updated) = (int("/status/readyReplicas"), int("/status/updatedReplicas"));
    if ready < replicas {
        return Ok(Progress::Waiting(format!("Waiting for {} pods to be ready...", replicas - ready)));
    }
    if let Some(partition) = sts.pointer("/spec/updateStrategy/rollingUpdate/partition").and_then(Value::as_i64) {
        let wanted = replicas - partition;
        if updated < wanted {
            return Ok(Progress::Waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {wanted} new pods have been updated..."
            )));
        }
        return Ok(Progress::Done(format!("partitioned roll out complete: {updated} new pods have been updated...")));
    }
    let (current, update) = (text("/status/currentRevision"), text("/status/updateRevision"));
    if current != update {
        return Ok(Progress::Waiting(format!(
            "waiting for statefulset rolling update to complete {updated} pods at revision {update}..."
        )));
    }
    let current_replicas = int("/status/currentReplicas");
    Ok(Progress::Done(format!("statefulset rolling update complete {current_replicas} pods at revision {current}...")))
}

/// Reads a Deployment's progress; fails once it is past its progress
/// deadline.
fn deployment_progress(deploy: &Value) -> Result<Progress> {
    let name = meta::name(deploy);
    let int = |p: &str| deploy.pointer(p).and_then(Value::as_i64);
    if int("/metadata/generation").unwrap_or(0) > int("/status/observedGeneration").unwrap_or(0) {
        return Ok(Progress::Waiting("Waiting for deployment spec update to be observed...".into()));
    }
    let conditions = deploy.pointer("/status/conditions").and_then(Value::as_array);
    let stuck = conditions.into_iter().flatten().any(|c| {
        c.get("type").and_then(Value::as_str) == Some("Progressing")
            && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    });
    if stuck {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let desired = int("/spec/replicas").unwrap_or(1);
    let updated = int("/status/updatedReplicas").unwrap_or(0);
    let total = int("/status/replicas").unwrap_or(0);
    let available = int("/status/availableReplicas").unwrap_or(0);
    let waiting =
        |what: String| Ok(Progress::Waiting(format!("Waiting for deployment {name:?} rollout to finish: {what}")));
    if updated < desired {
        return waiting(format!("{updated} out of {desired} new replicas have been updated..."));
    }
    if total > updated {
        return waiting(format!("{} old replicas are pending termination...", total - updated));
    }
    if available < updated {
        return waiting(format!("{available} of {updated} updated replicas are available..."));
    }
    Ok(Progress::Done(format!("deployment {name:?} successfully rolled out")))
}

/// Prints each new progress line until the rollout is done, resuming the
/// watch whenever it ends.
async fn follow(client: &Client, kind: &str, ns: &str, name: &str) -> Result<()> {
    let mut last = String::new();
    let mut report = |object: &Value| -> Result<bool> {
        match progress(kind, object)? {
            Progress::Done(line) => {
                outln!("{line}");
                Ok(true)
            }
            Progress::Waiting(line) => {
                if line != last {
                    outln!("{line}");
                    last = line;
                }
                Ok(false)
            }
        }
    };
    let params = ListParams::default().fields(&format!("metadata.name={name}"));
    loop {
        let object = client.get(kind, ns, name).await?;
        if report(&object)? {
            return Ok(());
        }
        let mut stream = client.watch(kind, ns, &params, meta::resource_version(&object)).await?;
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Added(d) | WatchEvent::Modified(d)) => {
                    if report(&d)? {
                        return Ok(());
                    }
                }
                Ok(WatchEvent::Deleted(_)) => bail!("{} {name:?} was deleted", kind.to_lowercase()),
                Ok(WatchEvent::Bookmark(_)) => {}
                // Expired or cut: start again from a fresh read.
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// === history and undo ===

/// The ReplicaSets `deploy` controls.
async fn owned_replica_sets(client: &Client, ns: &str, deploy: &Value) -> Result<Vec<Value>> {
    let uid = meta::str_field(deploy, "uid");
    let all = client.list("ReplicaSet", ns, &ListParams::default()).await?.items;
    Ok(all.into_iter().filter(|rs| controlled_by(rs, uid)).collect())
}

fn controlled_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).into_iter().flatten().any(|o| {
        o.get("controller").and_then(Value::as_bool) == Some(true) && o.get("uid").and_then(Value::as_str) == Some(uid)
    })
}

fn revision(rs: &Value) -> Option<i64> {
    rs.pointer("/metadata/annotations").and_then(|a| a.get(REVISION_ANNOTATION)).and_then(Value::as_str)?.parse().ok()
}

/// (REVISION_ANNOTATION, CHANGE-CAUSE) for each numbered ReplicaSet, oldest first.
pub fn history(replica_sets: &[Value]) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = replica_sets
        .iter()
        .filter_map(|rs| {
            let cause = rs
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION))
                .and_then(Value::as_str);
            Some((revision(rs)?, cause.filter(|c| !c.is_empty()).unwrap_or("<none>").to_string()))
        })
        .collect();
    rows.sort();
    rows.dedup_by_key(|(rev, _)| *rev);
    rows
}

/// The revision to roll back to and its pod template (less the
/// pod-template-hash label the controller added): `to_revision`, or with 0
/// the newest one before the current (highest) revision.
pub fn undo_template(name: &str, replica_sets: &[Value], to_revision: i64) -> Result<(i64, Value)> {
    let mut numbered: Vec<(i64, &Value)> = replica_sets.iter().filter_map(|rs| Some((revision(rs)?, rs))).collect();
    numbered.sort_by_key(|(rev, _)| std::cmp::Reverse(*rev));
    let (revision, rs) = match to_revision {
        0 => *numbered.get(1).ok_or_else(|| anyhow!("no rollout history found for deployment {name:?}"))?,
        n => *numbered
            .iter()
            .find(|(rev, _)| *rev == n)
            .ok_or_else(|| anyhow!("unable to find specified revision {n} in history"))?,
    };
    let mut template = rs.pointer("/spec/template").cloned().unwrap_or_else(|| json!({}));
    if let Some(labels) = template.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    Ok((revision, template))
}

// === pause and resume ===

async fn set_paused(client: &Client, ns: &str, name: &str, object_ref: &str, paused: bool) -> Result<()> {
    let deploy = client.get("Deployment", ns, name).await?;
    let now = deploy.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    match (now, paused) {
        (true, true) => bail!("{object_ref} is already paused"),
        (false, false) => bail!("{object_ref} is not paused"),
        _ => {}
    }
    client.patch("Deployment", ns, name, &json!({"spec": {"paused": paused}})).await?;
    outln!("{object_ref} {}", if paused { "paused" } else { "resumed" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(spec_replicas: i64, status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": 2}, "spec": {"replicas": spec_replicas}, "status": status})
    }

    fn waiting(p: Progress) -> String {
        match p {
            Progress::Waiting(line) => line,
            Progress::Done(line) => panic!("done: {line}"),
        }
    }

    #[test]
    fn progress_follows_the_replica_counts() {
        let status = |updated, total, available| json!({"observedGeneration": 2, "updatedReplicas": updated, "replicas": total, "availableReplicas": available});
        assert_eq!(
            waiting(progress("Deployment", &deploy(3, status(1, 4, 3))).unwrap()),
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        assert_eq!(
            waiting(progress("Deployment", &deploy(3, status(3, 5, 3))).unwrap()),
            "Waiting for deployment \"web\" rollout to finish: 2 old replicas are pending termination..."
        );
        assert_eq!(
            waiting(progress("Deployment", &deploy(3, status(3, 3, 1))).unwrap()),
            "Waiting for deployment \"web\" rollout to finish: 1 of 3 updated replicas are available..."
        );
        assert_eq!(
            progress("Deployment", &deploy(3, status(3, 3, 3))).unwrap(),
            Progress::Done("deployment \"web\" successfully rolled out".into())
        );
        // Scaled to zero: nothing to wait for.
        assert!(matches!(progress("Deployment", &deploy(0, status(0, 0, 0))).unwrap(), Progress::Done(_)));
    }

    #[test]
    fn a_daemon_sets_progress_counts_its_nodes() {
        let ds = |updated: i64, available: i64| {
            json!({"metadata": {"name": "agent", "generation": 2},
                   "status": {"observedGeneration": 2, "desiredNumberScheduled": 3,
                              "updatedNumberScheduled": updated, "numberAvailable": available}})
        };
        assert_eq!(
            waiting(progress("DaemonSet", &ds(1, 3)).unwrap()),
            "Waiting for daemon set \"agent\" rollout to finish: 1 out of 3 new pods have been updated..."
        );
        assert_eq!(
            waiting(progress("DaemonSet", &ds(3, 2)).unwrap()),
            "Waiting for daemon set \"agent\" rollout to finish: 2 of 3 updated pods are available..."
        );
        assert!(matches!(progress("DaemonSet", &ds(3, 3)).unwrap(), Progress::Done(_)));
        let on_delete = json!({"metadata": {"name": "agent"}, "spec": {"updateStrategy": {"type": "OnDelete"}}});
        assert!(progress("DaemonSet", &on_delete).is_err());
    }

    #[test]
    fn a_stateful_sets_progress_waits_for_ready_then_the_new_revision() {
        let sts = |ready: i64, current: &str| {
            json!({"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 3},
                   "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": 1, "currentReplicas": 3,
                              "currentRevision": current, "updateRevision": "db-new"}})
        };
        assert_eq!(waiting(progress("StatefulSet", &sts(1, "db-new")).unwrap()), "Waiting for 2 pods to be ready...");
        assert_eq!(
            waiting(progress("StatefulSet", &sts(3, "db-old")).unwrap()),
            "waiting for statefulset rolling update to complete 1 pods at revision db-new..."
        );
        assert_eq!(
            progress("StatefulSet", &sts(3, "db-new")).unwrap(),
            Progress::Done("statefulset rolling update complete 3 pods at revision db-new...".into())
        );
    }

    #[test]
    fn progress_waits_for_the_controller_and_fails_past_the_deadline() {
        let stale =
            deploy(1, json!({"observedGeneration": 1, "updatedReplicas": 1, "replicas": 1, "availableReplicas": 1}));
        assert_eq!(
            waiting(progress("Deployment", &stale).unwrap()),
            "Waiting for deployment spec update to be observed..."
        );
        let stuck = deploy(
            1,
            json!({"observedGeneration": 2, "conditions": [
                {"type": "Available", "status": "False"},
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            ]}),
        );
        assert_eq!(
            progress("Deployment", &stuck).unwrap_err().to_string(),
            "deployment \"web\" exceeded its progress deadline"
        );
    }

    fn rs(name: &str, revision: &str, image: &str, cause: Option<&str>) -> Value {
        let mut annotations = json!({REVISION_ANNOTATION: revision});
        if let Some(c) = cause {
            annotations[CHANGE_CAUSE_ANNOTATION] = json!(c);
        }
        json!({
            "metadata": {"name": name, "annotations": annotations,
                         "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d-1", "controller": true}]},
            "spec": {"template": {
                "metadata": {"labels": {"app": "web", POD_TEMPLATE_HASH_LABEL: name}},
                "spec": {"containers": [{"name": "web", "image": image}]}
            }}
        })
    }

    #[test]
    fn history_lists_revisions_in_order_with_their_cause() {
        let sets = [
            rs("web-c", "3", "v3", Some("set image v3")),
            rs("web-a", "1", "v1", None),
            rs("web-b", "2", "v2", Some("")),
        ];
        assert_eq!(history(&sets), [(1, "<none>".into()), (2, "<none>".into()), (3, "set image v3".into())]);
        let mut unnumbered = rs("web-x", "", "v0", None);
        unnumbered["metadata"]["annotations"] = json!({});
        assert!(history(&[unnumbered]).is_empty());
    }

    #[test]
    fn undo_picks_the_previous_revision_or_the_one_asked_for() {
        let sets = [rs("web-c", "3", "v3", None), rs("web-a", "1", "v1", None), rs("web-b", "2", "v2", None)];
        let (revision, template) = undo_template("web", &sets, 0).unwrap();
        assert_eq!(revision, 2);
        assert_eq!(template["spec"]["containers"][0]["image"], "v2");
        assert_eq!(template["metadata"]["labels"], json!({"app": "web"}), "pod-template-hash is dropped");

        let (revision, template) = undo_template("web", &sets, 1).unwrap();
        assert_eq!((revision, &template["spec"]["containers"][0]["image"]), (1, &json!("v1")));

        assert_eq!(
            undo_template("web", &sets, 7).unwrap_err().to_string(),
            "unable to find specified revision 7 in history"
        );
        assert_eq!(
            undo_template("web", &sets[..1], 0).unwrap_err().to_string(),
            "no rollout history found for deployment \"web\""
        );
    }

    #[test]
    fn only_replica_sets_the_deployment_controls_count() {
        let mine = rs("web-a", "1", "v1", None);
        assert!(controlled_by(&mine, "d-1"));
        assert!(!controlled_by(&mine, "d-2"));
        let mut adopted_not_controlled = mine.clone();
        adopted_not_controlled["metadata"]["ownerReferences"][0]["controller"] = json!(false);
        assert!(!controlled_by(&adopted_not_controlled, "d-1"));
    }
}
