//! HorizontalPodAutoscaler reaction on one real node: from load starting in
//! a Deployment's pod (its first pod Ready, burning a core) to the
//! replicas the HPA asked for all Ready, with the controller's default sync
//! period unless told otherwise. Baseline in the same run: the same
//! scale-out done by hand (`spec.replicas` patched) to the same replicas
//! Ready, so the difference is the autoscaler's detection and decision.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::runtime::{RuntimeOptions, BUSYBOX_IMAGE};
use skiff_testkit::{Cluster, ClusterOptions};

use crate::report::figure;
use crate::wait;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// The HPA's maxReplicas (and the replicas of the manual baseline).
    #[arg(long, default_value_t = 3)]
    max_replicas: i64,
    /// --horizontal-pod-autoscaler-sync-period of the controller-manager.
    #[arg(long, default_value = "15s")]
    sync_period: String,
}

const NODE: &str = "bench-node";
const LIMIT: Duration = Duration::from_secs(300);

pub async fn run(o: Options) -> anyhow::Result<()> {
    let options = ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() };
    let mut cluster = Cluster::start_with(options).await?;
    let sync = format!("--horizontal-pod-autoscaler-sync-period={}", o.sync_period);
    cluster.start_workers(NODE, &[&sync]).await?;
    let image = cluster.runtime().context("the cluster has no runtime")?.registry().image(BUSYBOX_IMAGE);
    let client = cluster.client();
    println!("# an HPA to {} replicas on one node, sync period {}", o.max_replicas, o.sync_period);

    // The baseline: the same scale-out by hand (the image is pulled here).
    client.create("Deployment", "default", &deployment("manual", &image, "exec sleep 3600")).await?;
    ready_replicas(&client, "manual", 1).await?;
    let started = Instant::now();
    client.patch("Deployment", "default", "manual", &json!({"spec": {"replicas": o.max_replicas}})).await?;
    ready_replicas(&client, "manual", o.max_replicas).await?;
    let manual = started.elapsed();
    client.delete("Deployment", "default", "manual").await?;

    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "burner"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burner"},
            "minReplicas": 1, "maxReplicas": o.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]}});
    client.create("HorizontalPodAutoscaler", "default", &hpa).await?;
    client.create("Deployment", "default", &deployment("burner", &image, "while :; do :; done")).await?;
    ready_replicas(&client, "burner", 1).await?;
    let load_started = Instant::now();
    let scaled = wait::until("the HPA to scale out", LIMIT, || async {
        let deploy = client.get("Deployment", "default", "burner").await.ok()?;
        deploy.pointer("/spec/replicas").and_then(Value::as_i64).filter(|n| *n > 1)
    })
    .await?;
    let decided = load_started.elapsed();
    ready_replicas(&client, "burner", scaled).await?;
    let reaction = load_started.elapsed();

    figure("hpa_decision_after_load", decided.as_secs_f64(), "s")?;
    figure("hpa_reaction_load_to_replicas_ready", reaction.as_secs_f64(), "s")?;
    figure("manual_scale_to_replicas_ready", manual.as_secs_f64(), "s")?;
    figure("hpa_reaction_minus_manual", (reaction.as_secs_f64() - manual.as_secs_f64()).max(0.0), "s")?;
    Ok(())
}

fn deployment(name: &str, image: &str, script: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": image, "command": ["sh", "-c", script],
                    "resources": {"requests": {"cpu": "100m"}}}]}}}})
}

/// Waits until `name` has `n` ready replicas.
async fn ready_replicas(client: &Client, name: &str, n: i64) -> anyhow::Result<()> {
    wait::until(&format!("{n} ready replicas of {name}"), LIMIT, || async {
        let deploy = client.get("Deployment", "default", name).await.ok()?;
        (deploy.pointer("/status/readyReplicas").and_then(Value::as_i64) == Some(n)).then_some(())
    })
    .await
}
