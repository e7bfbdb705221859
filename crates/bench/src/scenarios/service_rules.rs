//! Service rules: how long skiff-overlay takes to program N Services into
//! nftables, and how long one Endpoints change takes to reach the kernel,
//! beside applying that same one-service change with `nft -f` directly.
//!
//! For each count (1,000 then 10,000 by default) the Services (selector-less,
//! each with an Endpoints of two addresses) are created first, then
//! skiff-overlay (WireGuard off) starts in a network namespace; the initial
//! sync is the time from its start until its `services_programmed` gauge
//! reaches N and the kernel's table holds a chain for each. Then, `updates`
//! times, one Endpoints gets a new address and the clock runs until
//! skiff-overlay has finished a successful sync after it (its sync and error
//! counts, polled over HTTP from the root namespace, no fork: a sync ends
//! only once `nft -f` returned, i.e. the transaction is committed). That
//! sync may not be the one that applied the change (one already running, or
//! woken by something else), so the clock's reading is kept only once `nft
//! list chain` shows the new address; otherwise the next sync is waited
//! for. The listing is not timed into the figure: it costs as much as
//! listing the whole table (nft 1.0.6 fetches it all first: seconds at
//! 10,000 services), so polling with it would measure nft, and `nft
//! monitor` missed every change at 10,000; one listing's cost is reported
//! on its own. Nothing sends traffic.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use skiff_client::Client;
use skiff_testkit::netns::{Host, Lan};
use skiff_testkit::{free_port, Cluster, ClusterOptions};

use crate::report::{figure, histogram, ms, ratio, record};
use crate::tools;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Service counts, each measured in turn (services are added, not recreated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    counts: Vec<usize>,
    /// Endpoints changes measured per count.
    #[arg(long, default_value_t = 20)]
    updates: usize,
}

const TABLE: &str = "skiff";
const OVERLAY: &str = "overlay";
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.counts.iter().all(|c| (1..=60_000).contains(c)), "--counts must be 1..=60000 each");
    tools::require("nft", "the baseline and the check of each change; apt-get install nftables")?;
    tools::require("nsenter", "runs nft in the host; apt-get install util-linux")?;
    let mut lan = Lan::create().context("creating the LAN (needs root)")?;
    let host = lan.add_host("bench")?;
    let apiserver = SocketAddr::new(lan.gateway().into(), free_port());
    let mut cluster =
        Cluster::start_with(ClusterOptions { apiserver_listen: Some(apiserver), ..Default::default() }).await?;
    let client = cluster.client();
    let mut created = 0;
    for &n in &o.counts {
        println!("# {n} services, {} endpoint updates", o.updates);
        let start = Instant::now();
        create_services(&client, created..n.max(created)).await?;
        created = created.max(n);
        println!("# created in {:.1} s", start.elapsed().as_secs_f64());
        if let Err(e) = measure(&mut cluster, &client, &host, created, o.updates).await {
            if let Some(overlay) = cluster.service(OVERLAY) {
                let log = std::fs::read_to_string(overlay.process.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!(
                    "# skiff-overlay's log, last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            return Err(e);
        }
        cluster.stop_service(OVERLAY);
    }
    drop(cluster);
    drop(lan);
    Ok(())
}

async fn measure(cluster: &mut Cluster, client: &Client, host: &Host, n: usize, updates: usize) -> anyhow::Result<()> {
    let args = ["--wireguard=off", "--node-name=bench", &format!("--nft-table={TABLE}")].map(String::from).to_vec();
    let start = Instant::now();
    let metrics = cluster.start_service_in(host, OVERLAY, "skiff-overlay", &args, false).await?;
    wait_programmed(metrics, n).await?;
    let synced_in = start.elapsed();
    let chains = chain_names(host)?;
    if let Some(i) = (0..n).find(|i| !chains.contains_key(i)) {
        anyhow::bail!("skiff-overlay reported {n} services programmed, but the table has no chain for svc-{i}");
    }
    figure(format!("service_rules_initial_sync_{n}"), synced_in.as_secs_f64(), "s")?;

    let mut h = histogram();
    let mut last = (String::new(), String::new());
    for u in 0..updates {
        let i = (u * 7919) % n;
        let chain = &chains[&i];
        // Per count a different octet: a fresh address can't be one already shown.
        let fresh = Ipv4Addr::new(10, 99, (n % 251) as u8, (u % 250 + 1) as u8);
        let shown = format!("{fresh} . 8080");
        let before = synced(metrics)?;
        let started = Instant::now();
        set_endpoints(client, i, &[fresh, address(i, 1)]).await?;
        let took = wait_applied(host, metrics, chain, &shown, before, started)
            .with_context(|| format!("changing svc-{i}'s endpoints"))?;
        record(&mut h, took)?;
        last = (chain.clone(), shown);
    }
    let (p50, p99) = (ms(&h, 0.5)?, ms(&h, 0.99)?);
    figure(format!("service_rules_endpoint_update_p50_{n}"), p50, "ms")?;
    figure(format!("service_rules_endpoint_update_p99_{n}"), p99, "ms")?;
    // What polling would cost instead: one listing of one chain (nft
    // fetches the whole table first).
    let poll = Instant::now();
    let listed = list_chain(host, &last.0)?;
    figure(format!("service_rules_list_chain_cost_{n}"), poll.elapsed().as_secs_f64() * 1000.0, "ms")?;
    anyhow::ensure!(listed.contains(&last.1), "{} no longer shows {}", last.0, last.1);

    let base = baseline(host, &chains, n, updates)?;
    let base_p50 = ms(&base, 0.5)?;
    figure(format!("nft_direct_one_service_p50_{n}"), base_p50, "ms")?;
    figure(format!("nft_direct_one_service_p99_{n}"), ms(&base, 0.99)?, "ms")?;
    ratio(format!("service_rules_endpoint_update_p50_vs_nft_{n}"), p50, base_p50)?;
    Ok(())
}

/// The time from `started` to the end of the first successful sync after
/// the `seen`th whose table shows `shown` in `chain`. The listing runs
/// after the clock's reading: a sync that commits during it (only another
/// change could start one; the bench makes none) would be credited to the
/// earlier one.
fn wait_applied(
    host: &Host,
    metrics: SocketAddr,
    chain: &str,
    shown: &str,
    mut seen: u64,
    started: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let now = synced(metrics)?;
        if now <= seen {
            anyhow::ensure!(started.elapsed() < SYNC_TIMEOUT, "no sync showed {shown} in {chain}");
            continue;
        }
        let at = started.elapsed();
        if list_chain(host, chain)?.contains(shown) {
            return Ok(at);
        }
        seen = now;
    }
}

/// The floor: the same one-chain change written by hand and applied with
/// `nft -f` in the host (through the same `nsenter` as the polls).
fn baseline(
    host: &Host,
    chains: &HashMap<usize, String>,
    n: usize,
    updates: usize,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut h = histogram();
    for u in 0..updates {
        let i = (u * 104_729 + 1) % n;
        let chain = chains.get(&i).with_context(|| format!("no chain for svc-{i}"))?;
        let fresh = Ipv4Addr::new(10, 98, (u / 250) as u8, (u % 250 + 1) as u8);
        let t = format!("ip {TABLE}");
        let script = format!(
            "flush chain {t} {chain}\n\
             add rule {t} {chain} ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x4000\n\
             add rule {t} {chain} meta l4proto tcp dnat to numgen random mod 2 map {{ 0 : {fresh} . 8080, 1 : {} . 8080 }}\n",
            address(i, 1)
        );
        let start = Instant::now();
        nft_apply(host, &script)?;
        record(&mut h, start.elapsed())?;
    }
    Ok(h)
}

fn nft_apply(host: &Host, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = host.command("nft").args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("nft's stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Successful syncs skiff-overlay has finished (its sync-duration count,
/// less the failed ones): each has committed its nft transaction.
fn synced(metrics: SocketAddr) -> anyhow::Result<u64> {
    let text = scrape(metrics)?;
    let all = metric(&text, "skiff_overlay_proxy_sync_duration_seconds_count")?;
    let failed = metric(&text, "skiff_overlay_proxy_sync_errors_total")?;
    Ok(all.saturating_sub(failed))
}

/// skiff-overlay's /metrics, read over the LAN bridge from the root
/// namespace: no fork per poll.
fn scrape(metrics: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// An integer metric without labels.
fn metric(text: &str, name: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in skiff-overlay's metrics"))
}

fn list_chain(host: &Host, chain: &str) -> anyhow::Result<String> {
    let out = host.run("nft", &["list", "chain", "ip", TABLE, chain])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Service index → its chain, from one listing of the table's chains.
fn chain_names(host: &Host) -> anyhow::Result<HashMap<usize, String>> {
    let out = host.run("nft", &["-t", "list", "table", "ip", TABLE])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut chains = HashMap::new();
    for line in text.lines() {
        let Some(name) = line.trim().strip_prefix("chain ").and_then(|l| l.strip_suffix(" {")) else { continue };
        if let Some(i) = name
            .strip_prefix("svc-")
            .and_then(|rest| rest.split_once("-default/svc-"))
            .and_then(|(_, rest)| rest.strip_suffix("/http"))
            .and_then(|i| i.parse::<usize>().ok())
        {
            chains.insert(i, name.to_string());
        }
    }
    Ok(chains)
}

async fn wait_programmed(metrics: SocketAddr, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    while Instant::now() < deadline {
        // Refused until skiff-overlay listens.
        let programmed = scrape(metrics).ok().and_then(|t| metric(&t, "skiff_overlay_proxy_services_programmed").ok());
        if programmed == Some(n as u64) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("skiff-overlay never programmed {n} services")
}

fn cluster_ip(i: usize) -> String {
    format!("10.43.{}.{}", i / 250, i % 250 + 1)
}

/// Endpoint address `k` (0 or 1) of service `i`: distinct, never reached.
fn address(i: usize, k: usize) -> Ipv4Addr {
    let j = i * 2 + k;
    Ipv4Addr::new(10, 60 + (j / 62_500) as u8, (j / 250 % 250) as u8, (j % 250 + 1) as u8)
}

fn endpoints_object(i: usize, addresses: &[Ipv4Addr]) -> serde_json::Value {
    let addresses: Vec<_> = addresses.iter().map(|a| json!({"ip": a.to_string()})).collect();
    json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": format!("svc-{i}")},
           "subsets": [{"addresses": addresses, "ports": [{"name": "http", "port": 8080}]}]})
}

async fn create_services(client: &Client, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    stream::iter(range)
        .map(|i| {
            let client = client.clone();
            async move {
                let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}")},
                    "spec": {"clusterIP": cluster_ip(i), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
                client.create("Service", "default", &svc).await?;
                client.create("Endpoints", "default", &endpoints_object(i, &[address(i, 0), address(i, 1)])).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .context("creating services")?;
    Ok(())
}

async fn set_endpoints(client: &Client, i: usize, addresses: &[Ipv4Addr]) -> anyhow::Result<()> {
    let patch = endpoints_object(i, addresses);
    client.patch("Endpoints", "default", &format!("svc-{i}"), &json!({"subsets": patch["subsets"]})).await?;
    Ok(())
}
