//! A Job of 1,000 pods on hollow nodes (whose run-to-completion pods
//! succeed as soon as they run): time from creating the Job to its Complete
//! condition, and the rate pods complete at. Baseline in the same run: the
//! same number of bare pods created straight through the API by concurrent
//! clients, until all have succeeded; the difference is what the Job
//! controller costs (its parallelism limit, and counting each pod through
//! the tracking finalizer).

use std::time::{Duration, Instant};

use serde_json::json;
use skiff_client::{Client, ListParams};
use skiff_testkit::{Cluster, ClusterOptions};

use crate::report::figure;
use crate::wait;

#[derive(Debug, clap::Args)]
pub struct Options {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// The Job's completions (and the baseline's pod count).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// The Job's parallelism.
    #[arg(long, default_value_t = 100)]
    parallelism: usize,
    /// Concurrent creators of the baseline's bare pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
}

const NAMESPACE: &str = "bench";
const LIMIT: Duration = Duration::from_secs(1800);

pub async fn run(o: Options) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions::default()).await?;
    let client = cluster.client();
    client.create("Namespace", "", &json!({"metadata": {"name": NAMESPACE}})).await?;
    println!("# a Job of {} completions, parallelism {}, on {} hollow nodes", o.pods, o.parallelism, o.nodes);
    cluster.start_service("kubelet", "skiff-kubelet", &[format!("--hollow-nodes={}", o.nodes)]).await?;
    wait::until("hollow nodes registered", Duration::from_secs(600), || async {
        let nodes = client.list("Node", "", &ListParams::default()).await.ok()?;
        (nodes.items.len() >= o.nodes).then_some(())
    })
    .await?;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await?;
    cluster.start_service("controller-manager", "skiff-controller-manager", &[]).await?;

    let bare = bare_pods(&client, &o).await?;
    figure("bare_pods_succeeded_in", bare.as_secs_f64(), "s")?;
    let job = job_complete(&client, &o).await?;
    figure(format!("job_{}_pods_complete_in", o.pods), job.as_secs_f64(), "s")?;
    figure("job_pod_completion_rate", o.pods as f64 / job.as_secs_f64(), "pods/s")?;
    figure("job_vs_bare_pods_time", job.as_secs_f64() / bare.as_secs_f64(), "x")?;
    Ok(())
}

/// `o.pods` bare pods that run to completion, created by `o.clients`
/// writers: time until every one has succeeded.
async fn bare_pods(client: &Client, o: &Options) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..o.clients {
        let client = client.clone();
        let per = o.pods / o.clients + usize::from(w < o.pods % o.clients);
        writers.push(tokio::spawn(async move {
            for i in 0..per {
                let pod = json!({"metadata": {"name": format!("bare-{w}-{i}"), "labels": {"run": "bare"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}});
                client.create("Pod", NAMESPACE, &pod).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let params = ListParams::default().labels("run=bare");
    wait::until("bare pods succeeded", LIMIT, || async {
        let pods = client.list("Pod", NAMESPACE, &params).await.ok()?.items;
        let done = pods.iter().filter(|p| p["status"]["phase"] == "Succeeded").count();
        (done >= o.pods).then_some(())
    })
    .await?;
    Ok(started.elapsed())
}

/// A Job of `o.pods` completions: time from its create to Complete.
async fn job_complete(client: &Client, o: &Options) -> anyhow::Result<Duration> {
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch"},
        "spec": {"completions": o.pods, "parallelism": o.parallelism, "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}});
    let started = Instant::now();
    client.create("Job", NAMESPACE, &job).await?;
    let done = wait::until("the Job to finish", LIMIT, || async {
        let job = client.get("Job", NAMESPACE, "batch").await.ok()?;
        let conditions = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions
            .iter()
            .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
            .map(|c| (c["type"].clone(), job["status"]["succeeded"].clone()))
    })
    .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(done.0 == "Complete", "the Job failed: {done:?}");
    anyhow::ensure!(done.1 == o.pods, "the Job counted {} successes of {}", done.1, o.pods);
    Ok(elapsed)
}
