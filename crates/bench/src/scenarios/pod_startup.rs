//! Pod startup on one real node: create → Running (seen through a watch)
//! for pods whose image is already present, with the scheduler and the
//! kubelet on containerd in the path; beside it, the floor under it — the
//! same sandbox + create + start driven over CRI directly, in the same run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use skiff_client::{ListParams, WatchEvent};
use skiff_testkit::runtime::cri::v1::runtime_service_client::RuntimeServiceClient;
use skiff_testkit::runtime::cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, PodSandboxConfig, PodSandboxMetadata,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use skiff_testkit::runtime::{RuntimeOptions, BUSYBOX_IMAGE};
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::sync::Mutex;

use crate::report::{figure, histogram, ms, ratio, record};
use crate::wait;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Pods started through skiff.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created per second (a steady stream, as density tests do).
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Pods started over CRI directly for the baseline.
    #[arg(long, default_value_t = 20)]
    cri_pods: usize,
}

const NODE: &str = "bench-node";

pub async fn run(o: Options) -> anyhow::Result<()> {
    let options = ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() };
    let mut cluster = Cluster::start_with(options).await?;
    cluster.start_kubelet(NODE, &[]).await?;
    cluster.start_service("scheduler", "skiff-scheduler", &[]).await?;
    let image = cluster.runtime().context("the cluster has no runtime")?.registry().image(BUSYBOX_IMAGE);
    println!("# {} pods at {}/s on one node ({}); CRI baseline {} pods", o.pods, o.rate, image, o.cri_pods);

    let client = cluster.client();
    let pod = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
            "name": "c", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}})
    };
    // The first pod pulls the image; the measured ones find it present.
    client.create("Pod", "default", &pod("warm")).await?;
    wait_running(&client, "warm").await?;

    let start = client.list("Pod", "default", &ListParams::default()).await?.resource_version;
    let mut watch = Box::pin(client.watch("Pod", "default", &ListParams::default(), &start).await?);
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = o.pods;
    let watcher = {
        let created = created.clone();
        tokio::spawn(async move {
            let mut latency = histogram();
            let mut seen = 0;
            while seen < total {
                let WatchEvent::Modified(p) = wait::next_event(&mut watch).await? else { continue };
                let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if p["status"]["phase"] != "Running" {
                    continue;
                }
                if let Some(at) = created.lock().await.remove(&name) {
                    record(&mut latency, at.elapsed())?;
                    seen += 1;
                }
            }
            anyhow::Ok(latency)
        })
    };
    let every = Duration::from_secs_f64(1.0 / o.rate.max(0.01));
    for i in 0..o.pods {
        let name = format!("p-{i}");
        created.lock().await.insert(name.clone(), Instant::now());
        client.create("Pod", "default", &pod(&name)).await?;
        tokio::time::sleep(every).await;
    }
    let latency = tokio::time::timeout(Duration::from_secs(600), watcher).await.context("pods not Running")???;
    figure("pod_startup_p50", ms(&latency, 0.50)?, "ms")?;
    figure("pod_startup_p99", ms(&latency, 0.99)?, "ms")?;
    figure("pod_startup_max", ms(&latency, 1.0)?, "ms")?;

    let cri = cri_baseline(&cluster, &image, o.cri_pods).await?;
    figure("cri_direct_pod_start_p50", ms(&cri, 0.50)?, "ms")?;
    figure("cri_direct_pod_start_p99", ms(&cri, 0.99)?, "ms")?;
    ratio("pod_startup_p50_vs_cri_direct", ms(&latency, 0.50)?, ms(&cri, 0.50)?)?;
    Ok(())
}

async fn wait_running(client: &skiff_client::Client, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = client.get("Pod", "default", name).await?;
        if p["status"]["phase"] == "Running" {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} not Running after 120s: {}", p["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RunPodSandbox + CreateContainer + StartContainer straight over CRI, one
/// pod after another, as the floor under any kubelet.
async fn cri_baseline(cluster: &Cluster, image: &str, pods: usize) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let containerd = cluster.runtime().context("the cluster has no runtime")?.containerd();
    let mut cri = RuntimeServiceClient::new(containerd.cri_channel());
    let mut h = histogram();
    for i in 0..pods {
        let name = format!("cri-{i}");
        let log_dir = containerd.pod_log_dir().join(format!("bench_{name}"));
        std::fs::create_dir_all(&log_dir)?;
        let sandbox = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: format!("bench-uid-{i}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: log_dir.display().to_string(),
            ..Default::default()
        };
        let t = Instant::now();
        let id = cri
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let container = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata { name: "c".into(), attempt: 0 }),
                    image: Some(ImageSpec { image: image.to_string(), ..Default::default() }),
                    command: vec!["sleep".into(), "3600".into()],
                    log_path: "c/0.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox),
            })
            .await?
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest { container_id: container }).await?;
        record(&mut h, t.elapsed())?;
        cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    }
    Ok(h)
}
