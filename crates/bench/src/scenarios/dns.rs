//! Cluster DNS: queries/s and p99 for Service names, from concurrent UDP
//! clients on loopback, with dnsmasq serving the same names from a hosts
//! file as the baseline (`apt-get install dnsmasq-base`; without it the
//! scenario fails). Every answer must be the Service's ClusterIP: a wrong
//! or empty one fails the scenario, an unanswered query counts as lost.
//!
//! `services` Services are created with fixed ClusterIPs, skiff-dns starts,
//! and once it answers the last one, `clients` tasks each send
//! `queries_per_client` A queries one at a time (send, wait, next), so
//! latency includes only the server's time and loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::json;
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::net::UdpSocket;

use crate::report::{figure, histogram, ms, ratio, record};
use crate::tools;
use crate::usage::usage;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Services in the cluster (and names in the baseline's hosts file).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Concurrent UDP clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Queries each client sends, one after the other.
    #[arg(long, default_value_t = 5000)]
    queries_per_client: usize,
}

/// A query without an answer in this long counts as lost, not as latency.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.services > 0 && o.services <= 65_000, "--services must be 1..=65000");
    let dnsmasq = tools::require("dnsmasq", "the baseline; apt-get install dnsmasq-base (scripts/install-deps)")?;
    let mut cluster = Cluster::start_with(ClusterOptions::default()).await?;
    println!("# {} services; {} clients x {} queries", o.services, o.clients, o.queries_per_client);
    let client = cluster.client();
    stream::iter(0..o.services)
        .map(|i| {
            let client = client.clone();
            async move {
                let svc = json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"clusterIP": cluster_ip(i), "ports": [{"name": "http", "port": 80}]},
                });
                client.create("Service", "default", &svc).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating services")?;

    let port = free_udp_port().await?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    // Upstream: an unused loopback port; the bench asks only cluster names.
    let args = [format!("--listen={listen}"), "--upstream=127.0.0.1:9".to_string()];
    cluster.start_service("dns", "skiff-dns", &args).await?;
    wait_answers(listen, o.services - 1).await.context("skiff-dns never answered the last service")?;
    let skiff = hammer(listen, &o).await.context("skiff-dns")?;
    usage("skiff-dns", cluster.service("dns").and_then(|s| s.process.pid()))?;
    let base = dnsmasq_baseline(&dnsmasq, &o).await.context("the dnsmasq baseline")?;
    skiff.print("dns_cluster_qps", "dns_p99", "dns_lost")?;
    base.print("dnsmasq_qps", "dnsmasq_p99", "dnsmasq_lost")?;
    ratio("dns_cluster_qps_vs_dnsmasq", skiff.qps, base.qps)?;
    ratio("dns_p99_vs_dnsmasq", skiff.p99_ms, base.p99_ms)?;
    Ok(())
}

/// What one server did under the clients.
struct Load {
    qps: f64,
    p99_ms: f64,
    lost: u64,
}

impl Load {
    fn print(&self, qps: &str, p99: &str, lost: &str) -> Result<(), crate::error::Error> {
        figure(qps, self.qps, "queries/s")?;
        figure(p99, self.p99_ms, "ms")?;
        figure(lost, self.lost as f64, "queries")
    }
}

fn cluster_ip(i: usize) -> String {
    format!("10.43.{}.{}", i / 250, i % 250 + 1)
}

fn name(i: usize) -> String {
    format!("svc-{i}.default.svc.cluster.local")
}

async fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    Ok(socket.local_addr()?.port())
}

/// Polls `server` until it answers service `i`'s name with an address (60 s
/// at most), which must be its ClusterIP.
async fn wait_answers(server: SocketAddr, i: usize) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let packet = encode_query(&name(i));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        socket.send(&packet).await?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await {
            // No address yet: the server may not have synced the name.
            if let Some(reply) = decode_reply(&buf[..n], 0).filter(|r| !r.addresses.is_empty()) {
                return check_answer(i, &reply);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no answer for {} from {server}", name(i))
}

/// The answer to service `i`'s name must be its ClusterIP, and only that.
fn check_answer(i: usize, reply: &Reply) -> anyhow::Result<()> {
    let expected: Ipv4Addr = cluster_ip(i).parse()?;
    anyhow::ensure!(
        reply.rcode == 0 && reply.addresses == [expected],
        "{} answered {:?} (rcode {}), not {expected}",
        name(i),
        reply.addresses,
        reply.rcode
    );
    Ok(())
}

/// Runs the clients against `server`: queries/s, p99 and lost queries.
async fn hammer(server: SocketAddr, o: &Options) -> anyhow::Result<Load> {
    let packets: Arc<Vec<Vec<u8>>> = Arc::new((0..o.services).map(|i| encode_query(&name(i))).collect());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let packets = packets.clone();
        let per_client = o.queries_per_client;
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(server).await?;
            let mut h = histogram();
            let mut lost = 0u64;
            for q in 0..per_client {
                // Spread the clients over the names without a RNG.
                let i = (c * 7919 + q * 104_729) % packets.len();
                let id = (q as u16).wrapping_add(1);
                let sent = Instant::now();
                match ask(&socket, &packets[i], id).await? {
                    Some(reply) => {
                        check_answer(i, &reply)?;
                        record(&mut h, sent.elapsed())?;
                    }
                    None => lost += 1,
                }
            }
            anyhow::Ok((h, lost))
        }));
    }
    let mut all = histogram();
    let mut lost = 0;
    for t in tasks {
        let (h, l) = t.await??;
        all.add(&h)?;
        lost += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Load { qps: all.len() as f64 / elapsed, p99_ms: ms(&all, 0.99)?, lost })
}

/// Sends `packet` as query `id` and waits for its reply; None if none came
/// within [`QUERY_TIMEOUT`].
async fn ask(socket: &UdpSocket, packet: &[u8], id: u16) -> anyhow::Result<Option<Reply>> {
    let mut packet = packet.to_vec();
    packet[..2].copy_from_slice(&id.to_be_bytes());
    let deadline = Instant::now() + QUERY_TIMEOUT;
    socket.send(&packet).await?;
    let mut buf = [0u8; 1500];
    loop {
        let n = match tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Ok(None),
        };
        // A late answer to an earlier query: keep waiting for ours.
        if n >= 2 && buf[..2] != id.to_be_bytes() {
            continue;
        }
        let reply = decode_reply(&buf[..n], id);
        return reply.map(Some).with_context(|| format!("a malformed reply to query {id}: {:?}", &buf[..n]));
    }
}

/// dnsmasq serving the same names from a hosts file, measured the same way.
async fn dnsmasq_baseline(binary: &Path, o: &Options) -> anyhow::Result<Load> {
    let dir = tempfile_dir()?;
    let hosts = dir.join("hosts");
    let lines: String = (0..o.services).map(|i| format!("{} {}\n", cluster_ip(i), name(i))).collect();
    std::fs::write(&hosts, lines)?;
    let port = free_udp_port().await?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = tokio::process::Command::new(binary)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            "--local=/cluster.local/",
            "--cache-size=10000",
            "--dns-forward-max=1000",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting dnsmasq")?;
    let result = async {
        tokio::select! {
            ready = wait_answers(listen, o.services - 1) => ready?,
            exited = child.wait() => anyhow::bail!("dnsmasq exited before it answered: {exited:?}"),
        }
        let load = hammer(listen, o).await?;
        usage("dnsmasq", child.id())?;
        Ok(load)
    }
    .await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("skiff-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A recursive A query for `name`, id 0 (patched per send).
fn encode_query(name: &str) -> Vec<u8> {
    let mut p = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p
}

/// What a reply says: its rcode and the addresses of its A records.
#[derive(Debug, PartialEq)]
struct Reply {
    rcode: u8,
    addresses: Vec<Ipv4Addr>,
}

/// The reply to query `id`; None if `buf` is not a well-formed response
/// with that id.
fn decode_reply(buf: &[u8], id: u16) -> Option<Reply> {
    let word = |at: usize| buf.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    if buf.len() < 12 || word(0)? != id || buf[2] & 0x80 == 0 {
        return None;
    }
    let mut at = 12;
    for _ in 0..word(4)? {
        at = skip_name(buf, at)? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..word(6)? {
        at = skip_name(buf, at)?;
        let (rtype, class, len) = (word(at)?, word(at + 2)?, usize::from(word(at + 8)?));
        let data = buf.get(at + 10..at + 10 + len)?;
        if let (1, 1, Ok(octets)) = (rtype, class, <[u8; 4]>::try_from(data)) {
            addresses.push(Ipv4Addr::from(octets));
        }
        at += 10 + len;
    }
    Some(Reply { rcode: buf[3] & 0x0f, addresses })
}

/// The offset just past the name at `at`: labels up to a zero byte or a
/// compression pointer.
fn skip_name(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *buf.get(at)?;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return buf.get(at + 1).map(|_| at + 2);
        }
        at += 1 + usize::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply a server gives to `encode_query(name)`: the question, then
    /// A records whose names point back at it.
    fn reply_to(name: &str, id: u16, rcode: u8, addresses: &[Ipv4Addr]) -> Vec<u8> {
        let mut p = encode_query(name);
        p[..2].copy_from_slice(&id.to_be_bytes());
        p[2] |= 0x80;
        p[3] = rcode;
        p[6..8].copy_from_slice(&(addresses.len() as u16).to_be_bytes());
        for a in addresses {
            p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
            p.extend_from_slice(&a.octets());
        }
        p
    }

    #[test]
    fn reads_the_addresses_of_a_reply() {
        let ip = Ipv4Addr::new(10, 43, 0, 3);
        let reply = decode_reply(&reply_to(&name(2), 7, 0, &[ip]), 7).unwrap();
        assert_eq!(reply, Reply { rcode: 0, addresses: vec![ip] });
        check_answer(2, &reply).unwrap();
    }

    #[test]
    fn a_wrong_or_empty_answer_is_refused() {
        let wrong = decode_reply(&reply_to(&name(2), 7, 0, &[Ipv4Addr::new(10, 43, 0, 4)]), 7).unwrap();
        assert!(check_answer(2, &wrong).is_err());
        let empty = decode_reply(&reply_to(&name(2), 7, 3, &[]), 7).unwrap();
        assert!(check_answer(2, &empty).is_err());
    }

    #[test]
    fn another_id_a_query_or_a_truncated_reply_is_not_a_reply() {
        let packet = reply_to(&name(2), 7, 0, &[Ipv4Addr::new(10, 43, 0, 3)]);
        assert_eq!(decode_reply(&packet, 8), None);
        assert_eq!(decode_reply(&encode_query(&name(2)), 0), None);
        assert_eq!(decode_reply(&packet[..packet.len() - 1], 7), None);
    }
}
