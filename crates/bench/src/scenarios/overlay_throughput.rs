//! Pod-to-pod throughput across hosts over skiff's WireGuard overlay,
//! beside the raw link between the same two hosts, in the same run.
//!
//! Two hosts of a networked cluster (network namespaces on one bridge); a
//! pod on each; iperf3 runs inside the pods' network namespaces (found
//! through CRI) — so the overlay path is pod → bridge → WireGuard (userspace
//! wireguard-go here) → LAN → WireGuard → bridge → pod — and then between
//! the hosts' LAN addresses, unencrypted. Without iperf3 the scenario
//! fails: there would be no baseline.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use serde_json::{json, Value};
use skiff_testkit::runtime::cri::v1::runtime_service_client::RuntimeServiceClient;
use skiff_testkit::runtime::cri::v1::{ListPodSandboxRequest, PodSandboxStatusRequest};
use skiff_testkit::runtime::{cri_dial, BUSYBOX_IMAGE};
use skiff_testkit::{Cluster, ClusterOptions, NetworkOptions};

use crate::report::{figure, ratio};
use crate::{tools, wait};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds each iperf3 run lasts.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

/// How long the pods may take to run, on a loaded machine.
const PODS_RUNNING: Duration = Duration::from_secs(180);

pub async fn run(o: Options) -> anyhow::Result<()> {
    tools::require("iperf3", "measures both paths; apt-get install iperf3 (scripts/install-deps)")?;
    tools::require("ss", "shows when iperf3 listens; apt-get install iproute2")?;
    tools::require("nsenter", "runs iperf3 in the pods and hosts; apt-get install util-linux")?;
    let network = NetworkOptions { hosts: 2, ..Default::default() };
    let cluster = Cluster::start_with(ClusterOptions { network: Some(network), ..Default::default() }).await?;
    let network = cluster.network().context("the cluster has no hosts")?;
    let hosts = network.hosts();
    let image = network.registry().image(BUSYBOX_IMAGE);
    let client = cluster.client();
    for (name, node) in [("sender", "host-1"), ("receiver", "host-2")] {
        let pod = json!({"metadata": {"name": name}, "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]}});
        client.create("Pod", "default", &pod).await?;
    }
    let ip_of = |name: &'static str| {
        let client = client.clone();
        async move {
            let pod = client.get("Pod", "default", name).await.ok()?;
            let running = pod["status"]["phase"] == "Running";
            running.then(|| pod["status"]["podIP"].as_str().map(str::to_string)).flatten()
        }
    };
    let sender_ip = wait::until("the sender pod running", PODS_RUNNING, || ip_of("sender")).await?;
    let receiver_ip = wait::until("the receiver pod running", PODS_RUNNING, || ip_of("receiver")).await?;
    let sender_ns = pod_netns(hosts[0].containerd.socket_path(), &sender_ip).await?;
    let receiver_ns = pod_netns(hosts[1].containerd.socket_path(), &receiver_ip).await?;
    println!("# {}s iperf3 TCP, {sender_ip} (host-1) → {receiver_ip} (host-2), then host-1 → host-2 raw", o.seconds);

    let overlay = iperf(&format!("--net={sender_ns}"), &format!("--net={receiver_ns}"), &receiver_ip, o.seconds)?;
    let (a, b) = (&hosts[0].host, &hosts[1].host);
    let raw = iperf(
        &format!("--net={}", a.netns_path().display()),
        &format!("--net={}", b.netns_path().display()),
        &b.ip().to_string(),
        o.seconds,
    )?;
    figure("overlay_pod_to_pod_throughput", overlay, "Mbit/s")?;
    figure("raw_link_throughput", raw, "Mbit/s")?;
    ratio("overlay_vs_raw_link", overlay, raw)?;
    Ok(())
}

/// The network namespace of the sandbox whose pod IP is `ip`, from CRI's
/// verbose status (containerd puts the runtime spec there).
async fn pod_netns(socket: &std::path::Path, ip: &str) -> anyhow::Result<String> {
    let mut cri = RuntimeServiceClient::new(cri_dial(socket));
    let sandboxes = cri.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await?.into_inner().items;
    for sandbox in sandboxes {
        let request = PodSandboxStatusRequest { pod_sandbox_id: sandbox.id, verbose: true };
        let status = cri.pod_sandbox_status(request).await?.into_inner();
        if status.status.and_then(|s| s.network).is_none_or(|n| n.ip != ip) {
            continue;
        }
        let info: Value = serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))?;
        let namespaces = info.pointer("/runtimeSpec/linux/namespaces").and_then(Value::as_array);
        let path = namespaces
            .and_then(|n| n.iter().find(|ns| ns["type"] == "network"))
            .and_then(|ns| ns["path"].as_str())
            .ok_or_else(|| anyhow::anyhow!("no network namespace in the sandbox status of {ip}"))?;
        return Ok(path.to_string());
    }
    anyhow::bail!("no sandbox with IP {ip}")
}

/// Mbit/s received by an iperf3 server in netns `server` on `addr` from a
/// client in netns `client`.
fn iperf(client: &str, server: &str, addr: &str, seconds: u32) -> anyhow::Result<f64> {
    let mut listener = Command::new("nsenter")
        .args([server, "iperf3", "-s", "-1", "-B", addr, "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let measured = wait_listening(&mut listener, server).and_then(|()| iperf_client(client, addr, seconds));
    if measured.is_err() {
        // A server that got no test would wait for one forever.
        let _ = listener.kill();
    }
    let _ = listener.wait();
    measured
}

const IPERF_PORT: u16 = 5201;

/// Waits until the iperf3 server in netns `server` listens (a probe
/// connection would be taken for its one client), failing if it exits.
fn wait_listening(listener: &mut Child, server: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let filter = format!("sport = :{IPERF_PORT}");
    loop {
        if let Some(status) = listener.try_wait()? {
            anyhow::bail!("iperf3 -s exited before it listened: {status}");
        }
        let out = Command::new("nsenter").args([server, "ss", "-Htln", &filter]).output()?;
        anyhow::ensure!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
        if !out.stdout.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "iperf3 -s not listening after 30s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn iperf_client(client: &str, addr: &str, seconds: u32) -> anyhow::Result<f64> {
    let out = Command::new("nsenter")
        .args([client, "iperf3", "-c", addr, "-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string(), "-J"])
        .output()?;
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -c {addr} printed no report: {}", String::from_utf8_lossy(&out.stderr)))?;
    let bps = report.pointer("/end/sum_received/bits_per_second").and_then(Value::as_f64);
    bps.map(|b| b / 1e6).ok_or_else(|| anyhow::anyhow!("iperf3 to {addr} gave no result: {}", report["error"]))
}
