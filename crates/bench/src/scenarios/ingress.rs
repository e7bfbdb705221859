//! HTTP ingress: requests/s, p50 and p99 through skiff-ingress, beside
//! nginx and HAProxy proxying to the same upstreams in the same run, and
//! each proxy's resident memory after the load.
//!
//! Two nginx processes on loopback answer `200 ok` as the upstreams (the
//! pods). skiff-ingress reads them from Endpoints written straight into the
//! apiserver (no controllers, no pods), behind an Ingress for one host; the
//! baselines list the same two ports in their own config. All three keep
//! connections alive on both sides, balance round robin, log no requests,
//! and get as many workers as the machine has CPUs (skiff-ingress' tokio
//! runtime has one thread per CPU). Each in turn gets the same `wrk` run —
//! fixed time, fixed connections, one host header — and is stopped before
//! the next, so only one proxy competes with wrk and the upstreams for the
//! CPUs. Each proxy's CPU time per request is printed beside: on a
//! machine where wrk and the upstreams compete for the same cores, it is
//! what decides the throughput. A non-2xx answer or a socket error fails the scenario: its figures
//! would count failures as throughput. Without wrk, nginx or HAProxy the
//! scenario fails (`apt-get install wrk nginx haproxy`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use skiff_testkit::{binary, free_port, Cluster, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{figure, ratio};
use crate::usage::{children, usage};
use crate::{tools, wait};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds of load through each proxy.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Keep-alive connections wrk holds open to each proxy.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk's threads: each drives connections / threads of them.
    #[arg(long, default_value_t = 1)]
    wrk_threads: u32,
}

/// The host the Ingress routes; the baselines ignore it.
const HOST: &str = "bench.example.test";
/// What the upstreams answer, and so what a request through a proxy must.
const BODY: &str = "ok\n";
/// How long a process may take to serve, on a loaded machine.
const READY: Duration = Duration::from_secs(60);
/// Keep-alive requests per connection before nginx closes it (1,000 by
/// default), raised on the upstreams and the nginx baseline alike: neither
/// skiff-ingress nor HAProxy closes a connection after a count, and
/// reconnecting would tax nginx and the upstreams for a default alone.
const KEEPALIVE_REQUESTS: u32 = 1_000_000;

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(
        o.wrk_threads > 0 && o.connections >= o.wrk_threads,
        "--connections must be at least --wrk-threads, which must be at least 1"
    );
    let tools = Tools {
        wrk: tools::require("wrk", "drives the load; apt-get install wrk (scripts/install-deps)")?,
        nginx: tools::require("nginx", "the upstreams and a baseline; apt-get install nginx (scripts/install-deps)")?,
        haproxy: tools::require("haproxy", "a baseline; apt-get install haproxy (scripts/install-deps)")?,
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let mut cluster = Cluster::start().await?;
    let dir = cluster.dir().to_path_buf();
    let upstreams = [upstream(&tools.nginx, &dir, "upstream-1")?, upstream(&tools.nginx, &dir, "upstream-2")?];
    for u in &upstreams {
        u.process.wait_http_ok(u.addr, "/", READY).await?;
        expect_ok(u.addr).await.with_context(|| format!("upstream {}", u.addr))?;
    }
    let ports = [upstreams[0].addr.port(), upstreams[1].addr.port()];
    println!(
        "# wrk -t{} -c{} -d{}s through each proxy to 2 nginx upstreams on loopback; {cpus} CPUs, \
         so {cpus} runtime threads, workers and threads",
        o.wrk_threads, o.connections, o.seconds
    );

    let skiff = skiff_ingress(&mut cluster, &tools, &o, ports).await.context("skiff-ingress")?;
    let nginx = nginx_proxy(&tools, &dir, &o, cpus, ports).await.context("the nginx baseline")?;
    let haproxy = haproxy_proxy(&tools, &dir, &o, cpus, ports).await.context("the HAProxy baseline")?;
    for (name, m) in [("skiff", &skiff), ("nginx", &nginx), ("haproxy", &haproxy)] {
        m.print(name)?;
    }
    ratio("ingress_skiff_vs_nginx_rps_ratio", skiff.load.requests_per_sec, nginx.load.requests_per_sec)?;
    ratio("ingress_skiff_vs_haproxy_rps_ratio", skiff.load.requests_per_sec, haproxy.load.requests_per_sec)?;
    ratio("ingress_skiff_vs_nginx_p99_ratio", skiff.load.p99_ms, nginx.load.p99_ms)?;
    ratio("ingress_skiff_vs_nginx_cpu_per_request_ratio", skiff.cpu_us_per_request, nginx.cpu_us_per_request)?;
    ratio("ingress_skiff_vs_haproxy_p99_ratio", skiff.load.p99_ms, haproxy.load.p99_ms)?;
    Ok(())
}

struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    haproxy: PathBuf,
}

/// A server the scenario started, stopped (SIGTERM, then SIGKILL) when
/// dropped, on a failure too.
struct Server {
    process: Process,
    addr: SocketAddr,
}

/// What wrk measured through one proxy, and the proxy's memory after it.
struct Measured {
    load: Load,
    rss_mib: f64,
    /// The proxy's CPU time (user and system) per request served.
    cpu_us_per_request: f64,
}

impl Measured {
    fn print(&self, proxy: &str) -> Result<(), crate::error::Error> {
        figure(format!("ingress_{proxy}_requests_per_sec"), self.load.requests_per_sec, "requests/s")?;
        figure(format!("ingress_{proxy}_p50_ms"), self.load.p50_ms, "ms")?;
        figure(format!("ingress_{proxy}_p99_ms"), self.load.p99_ms, "ms")?;
        figure(format!("ingress_{proxy}_cpu_per_request_us"), self.cpu_us_per_request, "us")?;
        figure(format!("ingress_{proxy}_rss_mib"), self.rss_mib, "MiB")
    }
}

// === the proxies ===

/// skiff-ingress on the cluster, serving an Ingress for [`HOST`] whose
/// Service's Endpoints are the upstreams.
async fn skiff_ingress(cluster: &mut Cluster, tools: &Tools, o: &Options, ports: [u16; 2]) -> anyhow::Result<Measured> {
    let client = cluster.client();
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    client.create("Service", "default", &svc).await.context("creating the Service")?;
    let subsets: Vec<_> = ports
        .iter()
        .map(|p| json!({"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": p}]}))
        .collect();
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "bench"}, "subsets": subsets});
    client.create("Endpoints", "default", &eps).await.context("creating the Endpoints")?;
    let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "bench"},
        "spec": {"ingressClassName": "skiff", "rules": [{"host": HOST, "http": {"paths": [{"path": "/",
            "pathType": "Prefix", "backend": {"service": {"name": "bench", "port": {"number": 80}}}}]}}]}});
    client.create("Ingress", "default", &ing).await.context("creating the Ingress")?;

    // Started through `env`, not Cluster::start_service, to switch its
    // access log off as the baselines' are: at tens of thousands of
    // requests/s a line per request is a large part of the work. The
    // process is skiff-ingress itself once env has exec'd it.
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let bin = binary("skiff-ingress")?;
    let mut args = vec![
        "RUST_LOG=info,skiff_ingress::access=off".to_string(),
        bin.display().to_string(),
        format!("--server={}", cluster.server()),
        format!("--metrics-listen={metrics}"),
        format!("--http-listen={addr}"),
        "--shutdown-grace=1s".to_string(),
    ];
    if let Some(config) = cluster.kubeconfig_for("skiff-ingress")? {
        args.push(format!("--kubeconfig={}", config.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = Process::spawn("ingress", Path::new("env"), &args, cluster.dir(), false)?;
    process.wait_http_ok(metrics, "/readyz", READY).await?;
    // Ready means synced; the route table follows the sync.
    let routed = wait::until("the Ingress routed", READY, || async { expect_ok(addr).await.ok() }).await;
    if let Err(e) = routed {
        return Err(e.context(format!("the last answer: {:?}", answer(addr).await)));
    }
    measure(&Server { process, addr }, &[], tools, o).await
}

/// nginx as a reverse proxy with an upstream pool kept alive, as
/// ingress-nginx configures it (reuseport included: without it, one
/// worker may accept every connection wrk opens at once).
async fn nginx_proxy(tools: &Tools, dir: &Path, o: &Options, cpus: usize, ports: [u16; 2]) -> anyhow::Result<Measured> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = format!(
        "upstream upstreams {{
            server 127.0.0.1:{}; server 127.0.0.1:{};
            keepalive 64; keepalive_requests {KEEPALIVE_REQUESTS};
        }}
        server {{
            listen {addr} reuseport;
            keepalive_requests {KEEPALIVE_REQUESTS};
            location / {{
                proxy_pass http://upstreams;
                proxy_http_version 1.1;
                proxy_set_header Connection \"\";
            }}
        }}",
        ports[0], ports[1]
    );
    let server = nginx(&tools.nginx, dir, "nginx-proxy", cpus, addr, &http)?;
    server.process.wait_http_ok(addr, "/", READY).await?;
    expect_ok(addr).await?;
    // The master only supervises; the workers proxy. Both are resident.
    let workers = server.process.pid().map(children).unwrap_or_default();
    measure(&server, &workers, tools, o).await
}

async fn haproxy_proxy(
    tools: &Tools,
    dir: &Path,
    o: &Options,
    cpus: usize,
    ports: [u16; 2],
) -> anyhow::Result<Measured> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // No `log` line anywhere: HAProxy logs nothing.
    let config = format!(
        "global
    nbthread {cpus}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind {addr}
    default_backend upstreams
backend upstreams
    balance roundrobin
    server upstream-1 127.0.0.1:{}
    server upstream-2 127.0.0.1:{}
",
        ports[0], ports[1]
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let path = path.display().to_string();
    // -db: in the foreground, so the pid is HAProxy's own.
    let process = Process::spawn("haproxy", &tools.haproxy, &["-f", &path, "-db"], dir, false)?;
    process.wait_http_ok(addr, "/", READY).await?;
    expect_ok(addr).await?;
    measure(&Server { process, addr }, &[], tools, o).await
}

/// An upstream: one nginx worker answering [`BODY`] to every request.
fn upstream(nginx_bin: &Path, dir: &Path, name: &str) -> anyhow::Result<Server> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = format!(
        "server {{
            listen {addr};
            keepalive_requests {KEEPALIVE_REQUESTS};
            location / {{ return 200 \"ok\\n\"; }}
        }}"
    );
    nginx(nginx_bin, dir, name, 1, addr, &http)
}

/// An nginx instance in the foreground under `dir/name/`, with no access
/// log and `http` as its http block; /etc/nginx is never read.
fn nginx(bin: &Path, dir: &Path, name: &str, workers: usize, addr: SocketAddr, http: &str) -> anyhow::Result<Server> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let (pid, errors) = (prefix.join("nginx.pid"), prefix.join("error.log"));
    let config = format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {};
error_log {};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {http}
}}
",
        pid.display(),
        errors.display()
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
    // -e: the error log before the config is read, else the built-in
    // /var/log/nginx/error.log.
    let (prefix, conf, errors) =
        (format!("{}/", prefix.display()), conf.display().to_string(), errors.display().to_string());
    let process = Process::spawn(name, bin, &["-p", &prefix, "-c", &conf, "-e", &errors], dir, false)?;
    Ok(Server { process, addr })
}

// === measuring ===

/// wrk through `proxy`, then the resident memory of its process and
/// `others` (nginx's workers) while they still hold the load's state.
async fn measure(proxy: &Server, others: &[u32], tools: &Tools, o: &Options) -> anyhow::Result<Measured> {
    let before = proxy_usage(proxy, others)?;
    let load = wrk(&tools.wrk, proxy.addr, o).await?;
    let after = proxy_usage(proxy, others)?;
    let requests = load.requests_per_sec * f64::from(o.seconds);
    let cpu_us_per_request = (after.cpu_s - before.cpu_s) * 1e6 / requests.max(1.0);
    Ok(Measured { load, rss_mib: after.rss_mib, cpu_us_per_request })
}

/// The proxy's CPU time and memory, its process's and `others'` (nginx's
/// workers) together.
fn proxy_usage(proxy: &Server, others: &[u32]) -> anyhow::Result<crate::usage::Usage> {
    let mut total = usage("the proxy", proxy.process.pid())?;
    for &other in others {
        let worker = usage("a proxy worker", Some(other))?;
        total.cpu_s += worker.cpu_s;
        total.rss_mib += worker.rss_mib;
    }
    Ok(total)
}

async fn wrk(bin: &Path, addr: SocketAddr, o: &Options) -> anyhow::Result<Load> {
    let run = tokio::process::Command::new(bin)
        .arg(format!("-t{}", o.wrk_threads))
        .arg(format!("-c{}", o.connections))
        .arg(format!("-d{}s", o.seconds))
        .arg("--latency")
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("http://{addr}/"))
        .kill_on_drop(true)
        .output();
    let limit = Duration::from_secs(u64::from(o.seconds) + 60);
    let out = tokio::time::timeout(limit, run).await.context("wrk ran past its time")?.context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&stdout).with_context(|| format!("wrk's report:\n{stdout}"))
}

/// What one wrk run reports.
#[derive(Debug, PartialEq)]
struct Load {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Reads `wrk --latency`'s report; refuses one that counted errors.
fn parse_wrk(report: &str) -> anyhow::Result<Load> {
    let (mut rps, mut p50, mut p99) = (None, None, None);
    for line in report.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            anyhow::bail!("{} answers were not 2xx or 3xx", n.trim());
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0": printed only when
            // one of them is not 0.
            anyhow::bail!("socket errors:{errors}");
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().with_context(|| format!("requests/s in {line:?}"))?);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(wrk_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(wrk_ms(v.trim())?);
        }
    }
    let requests_per_sec = rps.context("no Requests/sec line")?;
    anyhow::ensure!(requests_per_sec > 0.0, "no request was answered");
    Ok(Load {
        requests_per_sec,
        p50_ms: p50.context("no 50% line: was --latency passed?")?,
        p99_ms: p99.context("no 99% line: was --latency passed?")?,
    })
}

/// A wrk duration ("812.00us", "1.20ms", "2.00s", "1.00m") in ms.
fn wrk_ms(value: &str) -> anyhow::Result<f64> {
    let at = value.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit in {value:?}"))?;
    let (number, unit) = value.split_at(at);
    let number: f64 = number.parse().with_context(|| format!("no number in {value:?}"))?;
    let ms_per_unit = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => anyhow::bail!("unknown unit in {value:?}"),
    };
    Ok(number * ms_per_unit)
}

/// Fails unless `GET /` for [`HOST`] through `addr` answers 200 [`BODY`].
async fn expect_ok(addr: SocketAddr) -> anyhow::Result<()> {
    let (status, body) = answer(addr).await?;
    anyhow::ensure!(status == 200 && body == BODY, "{addr} answered {status} {body:?}, not 200 {BODY:?}");
    Ok(())
}

/// The status and body of one `GET /` for [`HOST`] on its own connection.
async fn answer(addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer in 5s")??;
    let (head, body) = response.split_once("\r\n\r\n").with_context(|| format!("no header end in {response:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let status = status.with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report (wrk 4.1.0 with --latency).
    const REPORT: &str = "Running 1s test @ http://127.0.0.1:21999/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   127.67us  466.82us   4.29ms   95.44%
    Req/Sec    94.19k     3.90k   99.64k    54.55%
  Latency Distribution
     50%   30.00us
     75%   39.00us
     90%   58.00us
     99%    2.90ms
  102853 requests in 1.10s, 14.71MB read
Requests/sec:  93545.50
Transfer/sec:     13.38MB
";

    #[test]
    fn reads_requests_per_second_and_the_quantiles_in_ms() {
        let load = parse_wrk(REPORT).unwrap();
        assert_eq!(load.requests_per_sec, 93545.5);
        assert!((load.p50_ms - 0.03).abs() < 1e-9, "{load:?}");
        assert!((load.p99_ms - 2.9).abs() < 1e-9, "{load:?}");
    }

    #[test]
    fn converts_every_unit_wrk_prints() {
        for (value, ms) in [("812.00us", 0.812), ("1.20ms", 1.2), ("2.00s", 2000.0), ("1.50m", 90_000.0)] {
            assert!((wrk_ms(value).unwrap() - ms).abs() < 1e-9, "{value}");
        }
        assert!(wrk_ms("12").is_err());
        assert!(wrk_ms("12.00ns").is_err());
    }

    #[test]
    fn errors_or_failed_answers_fail_the_report() {
        let errors =
            REPORT.replace("Requests/sec", "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec");
        assert!(parse_wrk(&errors).unwrap_err().to_string().contains("read 3"));
        let non_2xx = REPORT.replace("Requests/sec", "  Non-2xx or 3xx responses: 17\nRequests/sec");
        assert!(parse_wrk(&non_2xx).unwrap_err().to_string().contains("17"));
    }

    #[test]
    fn a_report_without_latencies_is_refused() {
        let without: String =
            REPORT.lines().filter(|l| !l.contains('%') || l.contains("Stdev")).collect::<Vec<_>>().join("\n");
        assert!(parse_wrk(&without).is_err());
    }
}
