//! `skiffctl drain NODE [--ignore-daemonsets] [--force] [--timeout D]`:
//! cordon the node, delete its pods so their controllers recreate them
//! elsewhere, and wait until they are gone.
//!
//! As with kubectl, a pod no controller would recreate is only deleted with
//! `--force`, and DaemonSet pods (which would come straight back) make the
//! drain fail unless `--ignore-daemonsets` leaves them be. Mirror pods are
//! left alone. Nothing is deleted when any pod refuses.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use skiff_api::meta;
use skiff_client::{Client, ListParams};

use super::{cordon::set_unschedulable, parse_duration, Globals};

/// The annotation of a static pod's mirror in the API.
const MIRROR: &str = "kubernetes.io/config.mirror";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node to drain.
    pub node: String,
    /// Leave DaemonSet-managed pods in place instead of failing.
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Also delete pods that no controller manages (they are gone for good).
    #[arg(long)]
    pub force: bool,
    /// Give up waiting for the pods to go after this long; 0 waits for ever.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let client = globals.client()?;
    set_unschedulable(&client, &args.node, true).await?;
    let params = ListParams::default().fields(&format!("spec.nodeName={}", args.node));
    let pods = client.list("Pod", "", &params).await?.items;
    let plan = plan(&pods, args.ignore_daemonsets, args.force);
    if !plan.refused.is_empty() {
        bail!("unable to drain node {:?}: {}", args.node, plan.refused.join("; "));
    }
    for warning in &plan.warnings {
        eprintln!("Warning: {warning}");
    }
    for (ns, name) in &plan.delete {
        match client.delete("Pod", ns, name).await {
            Ok(_) => outln!("pod/{name} deleted"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(anyhow!(e).context(format!("deleting pod {ns}/{name}"))),
        }
    }
    let wait = wait_gone(&client, &params, &plan.delete);
    if args.timeout.is_zero() {
        wait.await?;
    } else {
        tokio::time::timeout(args.timeout, wait).await.map_err(|_| {
            anyhow!("timed out after {:?} waiting for the pods of node {:?} to go", args.timeout, args.node)
        })??;
    }
    outln!("node/{} drained", args.node);
    Ok(())
}

/// What a drain does with a node's pods.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (namespace, name) of the pods to delete.
    pub delete: Vec<(String, String)>,
    /// Why the drain cannot go ahead, one reason per kind of pod.
    pub refused: Vec<String>,
    pub warnings: Vec<String>,
}

/// Sorts a node's pods into those to delete, those to leave, and those that
/// stop the drain.
pub fn plan(pods: &[Value], ignore_daemonsets: bool, force: bool) -> Plan {
    let mut plan = Plan::default();
    let (mut daemons, mut unmanaged) = (Vec::new(), Vec::new());
    for pod in pods {
        let id = format!("{}/{}", meta::namespace(pod), meta::name(pod));
        if pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR)).is_some() {
            continue;
        }
        let finished = matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
        match controller_kind(pod) {
            Some("DaemonSet") => {
                daemons.push(id);
                continue;
            }
            None if !finished => unmanaged.push(id),
            _ => {}
        }
        plan.delete.push((meta::namespace(pod).to_string(), meta::name(pod).to_string()));
    }
    if !daemons.is_empty() {
        if ignore_daemonsets {
            plan.warnings.push(format!("ignoring DaemonSet-managed Pods: {}", daemons.join(", ")));
        } else {
            plan.refused.push(format!(
                "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
                daemons.join(", ")
            ));
        }
    }
    if !unmanaged.is_empty() {
        if force {
            plan.warnings.push(format!("deleting Pods that declare no controller: {}", unmanaged.join(", ")));
        } else {
            plan.refused.push(format!(
                "cannot delete Pods that declare no controller (use --force to override): {}",
                unmanaged.join(", ")
            ));
        }
    }
    plan
}

/// The kind of the owner that controls `pod`, if any.
fn controller_kind(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("kind")?
        .as_str()
}

/// Polls until none of `deleted` is left on the node. A pod recreated under
/// the same name elsewhere does not count: the list is of this node only.
async fn wait_gone(client: &Client, params: &ListParams, deleted: &[(String, String)]) -> Result<()> {
    loop {
        let left = client.list("Pod", "", params).await?.items;
        let waiting =
            left.iter().any(|p| deleted.iter().any(|(ns, name)| meta::namespace(p) == ns && meta::name(p) == name));
        if !waiting {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, owner: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "demo"}, "status": {"phase": "Running"}});
        if let Some(kind) = owner {
            p["metadata"]["ownerReferences"] = json!([{"kind": kind, "name": "x", "uid": "u", "controller": true}]);
        }
        p
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.delete.iter().map(|(_, n)| n.as_str()).collect()
    }

    #[test]
    fn deletes_controlled_pods_and_refuses_the_rest_by_default() {
        let pods = [
            pod("web-1", Some("ReplicaSet")),
            pod("db-0", Some("StatefulSet")),
            pod("ds-1", Some("DaemonSet")),
            pod("bare", None),
        ];
        let p = plan(&pods, false, false);
        assert_eq!(
            p.refused,
            [
                "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): demo/ds-1",
                "cannot delete Pods that declare no controller (use --force to override): demo/bare",
            ]
        );
        assert_eq!(names(&p), ["web-1", "db-0", "bare"], "the list a drain would delete, were it allowed");
    }

    #[test]
    fn flags_let_daemonsets_stay_and_unmanaged_pods_go() {
        let pods = [pod("web-1", Some("ReplicaSet")), pod("ds-1", Some("DaemonSet")), pod("bare", None)];
        let p = plan(&pods, true, true);
        assert!(p.refused.is_empty());
        assert_eq!(names(&p), ["web-1", "bare"]);
        assert_eq!(
            p.warnings,
            ["ignoring DaemonSet-managed Pods: demo/ds-1", "deleting Pods that declare no controller: demo/bare"]
        );
    }

    #[test]
    fn finished_and_mirror_pods_need_no_force() {
        let mut done = pod("job-x", None);
        done["status"]["phase"] = json!("Succeeded");
        let mut mirror = pod("etcd-n1", None);
        mirror["metadata"]["annotations"] = json!({MIRROR: "abc"});
        let mut not_controller = pod("adopted", Some("ReplicaSet"));
        not_controller["metadata"]["ownerReferences"][0]["controller"] = json!(false);
        let p = plan(&[done, mirror, not_controller], false, false);
        assert_eq!(names(&p), ["job-x", "adopted"]);
        assert_eq!(
            p.refused,
            ["cannot delete Pods that declare no controller (use --force to override): demo/adopted"]
        );
    }
}
