//! docker-compose: the images' sizes, and the stack's cold start: from
//! `docker-compose up -d` (images built, volumes fresh) until both nodes
//! are Ready, beside the floor of the same stack: its 3-member etcd
//! cluster alone, from `up -d` until all three members report healthy.
//!
//! Both are timed by polling (every 500 ms: etcd's healthchecks, skiffctl
//! in a control-plane container), so each reading is late by up to one
//! poll and one `docker-compose exec`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use skiff_testkit::compose::{build_images, Stack};

use crate::report::{figure, ratio};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// The cargo profile the images' binaries are built with: release, or
    /// dev (as the tests use; bigger and slower).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Measure the images as they are, without running scripts/images.
    #[arg(long)]
    no_build: bool,
}

const START_TIMEOUT: Duration = Duration::from_secs(600);
const ETCD: [&str; 3] = ["etcd-1", "etcd-2", "etcd-3"];
/// The images scripts/images makes (tag `latest`); each figure is named
/// after one. The control plane's are the base and one per service.
const IMAGES: [&str; 11] = [
    "skiff-base",
    "skiff-apiserver",
    "skiff-scheduler",
    "skiff-controller-manager",
    "skiff-dns",
    "skiff-ingress",
    "skiffctl",
    "skiff-etcd",
    "skiff-node",
    "skiff-registry",
    "skiff-prometheus",
];

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(o.profile.as_str(), "release" | "dev"), "--profile: release or dev");
    if !o.no_build {
        println!("# scripts/images --profile {}", o.profile);
        build_images(&o.profile).map_err(|e| anyhow!(e))?;
    }
    for image in IMAGES {
        let size = image_size(&format!("{image}:latest"))? as f64 / (1 << 20) as f64;
        figure(format!("image_size_{}", image.replace('-', "_")), size, "MiB")?;
    }
    // Blocking all the way (docker-compose and polls): off the runtime.
    let (etcd, skiff) =
        tokio::task::spawn_blocking(|| Ok::<_, anyhow::Error>((etcd_cold_start()?, stack_cold_start()?)))
            .await
            .context("the cold starts")??;
    figure("etcd_cluster_cold_start", etcd.as_secs_f64(), "s")?;
    figure("compose_cold_start_to_nodes_ready", skiff.as_secs_f64(), "s")?;
    ratio("compose_cold_start_vs_etcd_cluster", skiff.as_secs_f64(), etcd.as_secs_f64())?;
    Ok(())
}

fn image_size(image: &str) -> anyhow::Result<u64> {
    let out = Command::new("docker").args(["image", "inspect", "-f", "{{.Size}}", image]).output()?;
    anyhow::ensure!(out.status.success(), "{image}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The baseline: the stack's etcd members alone, up and healthy.
fn etcd_cold_start() -> anyhow::Result<Duration> {
    let stack = Stack::new("skiff-bench-etcd");
    let start = Instant::now();
    let mut up = vec!["up", "-d"];
    up.extend(ETCD);
    stack.compose(&up).map_err(|e| anyhow!(e))?;
    stack
        .wait_for("the etcd members healthy", START_TIMEOUT, || {
            let ids = stack.compose(&["ps", "-q", "etcd-1", "etcd-2", "etcd-3"])?;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            let mut args = vec!["inspect", "-f", "{{.State.Health.Status}}"];
            args.extend(&ids);
            let out = Command::new("docker").args(&args).output().map_err(|e| e.to_string())?;
            let health = String::from_utf8_lossy(&out.stdout);
            match health.lines().filter(|h| *h == "healthy").count() {
                3 => Ok(()),
                n => Err(format!("{n} of 3 healthy")),
            }
        })
        .map_err(|e| anyhow!(e))?;
    let took = start.elapsed();
    stack.down().map_err(|e| anyhow!(e))?;
    Ok(took)
}

/// The whole stack, until both nodes are Ready.
fn stack_cold_start() -> anyhow::Result<Duration> {
    let stack = Stack::new("skiff-bench");
    let start = Instant::now();
    stack.compose(&["up", "-d"]).map_err(|e| anyhow!(e))?;
    let ready = stack.wait_for("both nodes Ready", START_TIMEOUT, || match stack.ready_nodes()? {
        2 => Ok(()),
        n => Err(format!("{n} of 2 nodes Ready")),
    });
    let took = start.elapsed();
    if let Err(e) = ready {
        return Err(anyhow!("{e}\n--- logs ---\n{}", stack.logs()));
    }
    stack.down().map_err(|e| anyhow!(e))?;
    Ok(took)
}
