//! skiff-bench: one scenario per figure the issues name, each printing
//! `name: value unit` lines, with its baseline measured in the same run.
//!
//! The scenarios start services from the binaries beside this one: run
//! `cargo build --release --bins` first.
#![forbid(unsafe_code)]

mod error;
mod report;
mod scenarios;
mod tools;
mod usage;
mod wait;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "skiff-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Object API: creates/s and p99 create latency at N concurrent clients,
    /// and update-to-watchers fan-out latency, each beside raw etcd.
    Api(scenarios::api::Options),
    /// Scheduler and controllers on 5,000 hollow nodes: pods/s and p99
    /// create-to-bound for 30,000 pods, a 10,000-replica Deployment's time to
    /// available, and control-plane memory.
    Scheduler(scenarios::scheduler::Options),
    /// Pod startup on one real node (containerd): create → Running p50/p99
    /// over a steady stream of pods, beside driving CRI directly.
    PodStartup(scenarios::pod_startup::Options),
    /// Cluster DNS: queries/s and p99 for Service names from concurrent UDP
    /// clients, beside dnsmasq serving the same names from a hosts file.
    Dns(scenarios::dns::Options),
    /// Service data plane: skiff-overlay's initial sync of 1,000 and 10,000
    /// Services into nftables and Endpoints-change-to-kernel p50/p99, beside
    /// applying the same one-service change with `nft -f`.
    ServiceRules(scenarios::service_rules::Options),
    /// Pod-to-pod TCP throughput between two hosts over the WireGuard
    /// overlay, beside the raw link between the same hosts (iperf3).
    OverlayThroughput(scenarios::overlay_throughput::Options),
    /// HTTP ingress: requests/s, p50 and p99 through skiff-ingress under
    /// wrk, beside nginx and HAProxy proxying to the same upstreams, and
    /// each proxy's memory after the load.
    Ingress(scenarios::ingress::Options),
    /// Jobs on hollow nodes: a 1,000-pod Job's time from create to
    /// Complete, beside the same pods created bare until all succeed.
    Job(scenarios::job::Options),
    /// HorizontalPodAutoscaler on one real node: from load starting to the
    /// new replicas Ready, beside the same scale-out done by hand.
    Hpa(scenarios::hpa::Options),
    /// docker-compose: the images' sizes and the stack's cold start to
    /// every node Ready, beside its etcd cluster's alone.
    ComposeUp(scenarios::compose_up::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Api(o) => scenarios::api::run(o).await,
        Scenario::Scheduler(o) => scenarios::scheduler::run(o).await,
        Scenario::PodStartup(o) => scenarios::pod_startup::run(o).await,
        Scenario::Dns(o) => scenarios::dns::run(o).await,
        Scenario::ServiceRules(o) => scenarios::service_rules::run(o).await,
        Scenario::OverlayThroughput(o) => scenarios::overlay_throughput::run(o).await,
        Scenario::Ingress(o) => scenarios::ingress::run(o).await,
        Scenario::ComposeUp(o) => scenarios::compose_up::run(o).await,
        Scenario::Job(o) => scenarios::job::run(o).await,
        Scenario::Hpa(o) => scenarios::hpa::run(o).await,
    }
}
