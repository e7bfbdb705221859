//! The Grafana dashboards in dashboards/ against a live cluster: etcd, the
//! apiserver, scheduler, controller-manager, hollow nodes, skiff-dns and
//! skiff-ingress, plus skiff-overlay on a network-namespace host, scraped
//! every second by a real Prometheus. After a small
//! workload, every query of every panel must parse and return data, so a
//! dashboard cannot refer to a metric or label the services do not export.
//! Each service's /metrics also passes `promtool check metrics`.
//!
//! Needs root (the overlay's network namespace, nftables, wireguard-go),
//! Prometheus (`scripts/install-deps`) and the binaries:
//! `cargo build --workspace --bins`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::netns::Lan;
use skiff_testkit::{eventually, free_port, Cluster, ClusterOptions};
use tokio::net::UdpSocket;

#[path = "support/http.rs"]
mod http;
use http::{get, Upstream};

#[path = "support/upstream.rs"]
mod upstream;
use upstream::fake_upstream;

const NS: &str = "default";

/// Panels whose queries must parse but may return nothing here, with why:
/// (dashboard file, panel title, reason).
const NO_DATA_HERE: &[(&str, &str, &str)] = &[
    ("kubelet.json", "Pods on real nodes", "pod stats come from CRI: the test runs hollow nodes, not containerd"),
    ("kubelet.json", "Memory working set (real nodes)", "pod stats come from CRI: hollow nodes only"),
    ("kubelet.json", "Pod CPU (real nodes)", "pod stats come from CRI: hollow nodes only"),
    ("kubelet.json", "Pod memory working set (real nodes)", "pod stats come from CRI: hollow nodes only"),
    ("kubelet.json", "Container CPU (real nodes)", "container stats come from CRI: hollow nodes only"),
    ("kubelet.json", "Container memory working set (real nodes)", "container stats come from CRI: hollow nodes only"),
    ("kubelet.json", "Hollow write errors by operation", "no write of a hollow node fails in a healthy cluster"),
    ("controllers.json", "Errors by controller", "no reconcile fails in this workload"),
    ("controllers.json", "Errors / s", "no reconcile fails in this workload"),
    ("controllers.json", "Error ratio", "no reconcile fails in this workload"),
];

fn excluded(file: &str, title: &str) -> Option<&'static str> {
    NO_DATA_HERE.iter().find(|(f, t, _)| *f == file && *t == title).map(|(_, _, why)| *why)
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Every dashboard: (file name, parsed JSON), sorted by name.
fn dashboards() -> Vec<(String, Value)> {
    let mut all: Vec<(String, Value)> = std::fs::read_dir(dashboards_dir())
        .expect("read dashboards/")
        .map(|e| e.expect("dashboards/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// One query of one panel.
struct PanelQuery {
    dashboard: String,
    panel: String,
    expr: String,
}

/// Every target's `expr`, rows' nested panels included.
fn queries(dashboards: &[(String, Value)]) -> Vec<PanelQuery> {
    fn walk(file: &str, panels: &[Value], out: &mut Vec<PanelQuery>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr =
                    t["expr"].as_str().unwrap_or_else(|| panic!("{file}: panel {title:?}: a target without expr"));
                out.push(PanelQuery { dashboard: file.to_string(), panel: title.to_string(), expr: expr.to_string() });
            }
            walk(file, p["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), out);
        }
    }
    let mut out = Vec::new();
    for (file, d) in dashboards {
        walk(file, d["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), &mut out);
    }
    out
}

/// Grafana's built-in interval variables, as Grafana would expand them for
/// a short range scraped every second.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
}

/// `s` percent-encoded for a query string (RFC 3986 unreserved kept).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// === Prometheus ===

/// A Prometheus server scraping `targets` (job, address) every second,
/// killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let binary = which("prometheus").expect("prometheus not found: run scripts/install-deps (Debian `prometheus`)");
        let dir = tempfile::Builder::new().prefix("skiff-prometheus-").tempdir().expect("temp dir");
        let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create prometheus.log"))
            .spawn()
            .expect("start prometheus");
        Self { child, addr, log, _dir: dir }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// GET `path` on the HTTP API; the JSON answer, whatever its status.
    async fn api(&self, path: &str) -> Option<Value> {
        let r = get(self.addr, "prometheus", path).await.ok()?;
        serde_json::from_str(&r.body).ok()
    }

    async fn query(&self, expr: &str) -> Option<Value> {
        self.api(&format!("/api/v1/query?query={}", url_encode(expr))).await
    }

    /// Waits until Prometheus scrapes all `want` targets successfully;
    /// panics with its log if it exits first.
    async fn wait_targets_up(&mut self, want: usize) {
        let deadline = tokio::time::Instant::now() + skiff_testkit::EVENTUALLY;
        let mut last = Value::Null;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_tail());
            }
            if let Some(targets) = self.api("/api/v1/targets").await {
                let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                if active.len() == want && active.iter().all(|t| t["health"] == "up") {
                    return;
                }
                last = targets;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {want} Prometheus targets up: {last}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

// === the workload ===

/// One DNS query over UDP; whether an answer came back within 2 s.
async fn dns_query(server: SocketAddr, name: &str, rtype: RecordType) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    socket.send_to(&msg.to_vec().expect("encode"), server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await.is_ok_and(|r| r.is_ok())
}

/// A Service `name` whose Endpoints is `upstream`.
async fn backend(client: &Client, name: &str, upstream: SocketAddr) {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    client.create("Service", NS, &svc).await.expect("create service");
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name},
        "subsets": [{"addresses": [{"ip": upstream.ip().to_string()}],
                     "ports": [{"name": "http", "port": upstream.port()}]}]});
    client.create("Endpoints", NS, &eps).await.expect("create endpoints");
}

fn ingress_rule(host: &str, service: &str) -> Value {
    json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": service, "port": {"number": 80}}}}]}})
}

/// Prometheus' own lint of what `addr` serves (`promtool check metrics`:
/// counters end in `_total`, units are spelled out in base units...), so
/// a metric added later keeps the conventions the dashboards rely on.
async fn lint_metrics(job: &str, addr: SocketAddr) {
    use std::io::Write;
    let text = get(addr, "metrics", "/metrics").await.unwrap_or_else(|e| panic!("{job}: GET /metrics: {e}")).body;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian `prometheus`: scripts/install-deps)");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "{job} ({addr}): promtool check metrics:\n{said}");
}

/// Whether `expr` evaluates to at least one sample now.
async fn has_data(prometheus: &Prometheus, expr: &str) -> bool {
    let Some(answer) = prometheus.query(expr).await else { return false };
    let result = &answer["data"]["result"];
    match answer["data"]["resultType"].as_str() {
        Some("vector" | "matrix") => result.as_array().is_some_and(|r| !r.is_empty()),
        Some("scalar" | "string") => true,
        _ => false,
    }
}

#[tokio::test]
async fn every_panel_query_parses_and_returns_data() {
    let all = dashboards();
    assert!(all.len() >= 8, "dashboards/ holds {} dashboards", all.len());
    for (file, title, _) in NO_DATA_HERE {
        let d = &all.iter().find(|(f, _)| f == file).unwrap_or_else(|| panic!("NO_DATA_HERE names {file}")).1;
        let found = d["panels"].as_array().into_iter().flatten().any(|p| p["title"] == *title);
        assert!(found, "NO_DATA_HERE names panel {title:?}, which {file} does not have");
    }
    // What Grafana needs to load them through provisioning and to let the
    // user pick the Prometheus datasource.
    let mut uids = std::collections::BTreeSet::new();
    for (file, d) in &all {
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} is used twice");
        assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{file}: schemaVersion {}", d["schemaVersion"]);
        let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}: no `datasource` variable of type prometheus"
        );
        for p in d["panels"].as_array().into_iter().flatten() {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: panel {}: datasource", p["title"]);
        }
    }
    let panel_queries = queries(&all);

    // skiff-overlay programs nftables and WireGuard, so it gets a host of
    // its own (a network namespace) and the apiserver listens on that
    // host's LAN; everything else stays on the root namespace.
    let mut lan = Lan::create().expect("create a LAN for skiff-overlay's host (needs root)");
    let host = lan.add_host("dash").expect("add a host");
    let apiserver = SocketAddr::new(lan.gateway().into(), free_port());
    let mut cluster = Cluster::start_with(ClusterOptions { apiserver_listen: Some(apiserver), ..Default::default() })
        .await
        .expect("start cluster");
    let client = cluster.client();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let kubelet = cluster
        .start_service("kubelet", "skiff-kubelet", &args(&["--hollow-nodes=3", "--heartbeat-interval=1s"]))
        .await
        .expect("hollow kubelet");
    let scheduler = cluster.start_service("scheduler", "skiff-scheduler", &[]).await.expect("scheduler");
    let controllers =
        cluster.start_service("controller-manager", "skiff-controller-manager", &[]).await.expect("controller-manager");
    let (dns_upstream, dns_upstream_task) = fake_upstream().await;
    let dns_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dns = cluster
        .start_service("dns", "skiff-dns", &[format!("--listen={dns_addr}"), format!("--upstream={dns_upstream}")])
        .await
        .expect("skiff-dns");
    let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let ingress = cluster
        .start_service(
            "ingress",
            "skiff-ingress",
            &[format!("--http-listen={http_addr}"), format!("--https-listen={https_addr}")],
        )
        .await
        .expect("skiff-ingress");

    // The Node a kubelet on that host would register, with the podCIDR the
    // controller-manager would cut; only the overlay uses it.
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "dash"},
        "spec": {"podCIDR": "10.244.9.0/24"}});
    let mut node = client.create("Node", "", &node).await.expect("create Node dash");
    node["status"] = json!({"addresses": [{"type": "InternalIP", "address": host.ip().to_string()}]});
    client.update_status("Node", "", &node).await.expect("set Node dash's address");
    let state_dir = cluster.dir().join("overlay-dash");
    let overlay_args = [
        "--node-name=dash".to_string(),
        format!("--state-dir={}", state_dir.display()),
        "--wireguard=userspace".into(),
    ];
    let overlay =
        cluster.start_service_in(&host, "overlay", "skiff-overlay", &overlay_args, true).await.expect("skiff-overlay");

    let targets = [
        ("apiserver", cluster.apiserver_metrics()),
        ("kubelet", kubelet),
        ("scheduler", scheduler),
        ("controller-manager", controllers),
        ("dns", dns),
        ("ingress", ingress),
        ("overlay", overlay),
    ];
    let mut prometheus = Prometheus::start(&targets);
    prometheus.wait_targets_up(targets.len()).await;

    // Pods for the scheduler, controllers and hollow nodes, and one that
    // fits no node, so the unschedulable queue and result have series.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}});
    client.create("Deployment", NS, &deployment).await.expect("create deployment");
    let huge = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100000"}}}]}});
    client.create("Pod", NS, &huge).await.expect("create pod huge");
    // A NOT_FOUND, so the apiserver's non-OK panels have a series.
    assert!(client.get("ConfigMap", NS, "no-such-configmap").await.is_err());

    // An Ingress with a live upstream and one whose only endpoint refuses
    // connections (502s and connect errors).
    let up = Upstream::start("web").await;
    backend(&client, "web", up.addr).await;
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    backend(&client, "dead", closed).await;
    let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "site"},
        "spec": {"ingressClassName": "skiff", "rules": [ingress_rule("web.example.test", "web"), ingress_rule("dead.example.test", "dead")]}});
    client.create("Ingress", NS, &ing).await.expect("create ingress");
    eventually("web.example.test served through the ingress", || async {
        let r = get(http_addr, "web.example.test", "/").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    for _ in 0..5 {
        let _ = get(http_addr, "web.example.test", "/").await;
        let _ = get(http_addr, "dead.example.test", "/").await;
    }

    // DNS answers from the zone (NOERROR, NXDOMAIN) and forwarded.
    eventually("skiff-dns answers", || async {
        dns_query(dns_addr, "web.default.svc.cluster.local.", RecordType::A).await.then_some(())
    })
    .await;
    for (name, rtype) in [
        ("web.default.svc.cluster.local.", RecordType::A),
        ("nope.default.svc.cluster.local.", RecordType::A),
        ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ("www.example.test.", RecordType::A),
    ] {
        assert!(dns_query(dns_addr, name, rtype).await, "no DNS answer for {name} {rtype}");
    }

    for (job, addr) in targets {
        lint_metrics(job, addr).await;
    }

    // Every query must parse at once; data may lag a scrape or two, so
    // those without any are polled together and all named if time runs out.
    let mut pending = Vec::new();
    for q in &panel_queries {
        let expr = expand(&q.expr);
        let what = format!("{}: panel {:?}: {expr}", q.dashboard, q.panel);
        let first = eventually(&format!("an answer from Prometheus to {what}"), || prometheus.query(&expr)).await;
        assert_eq!(first["status"], "success", "{what}: Prometheus rejected the query: {first}");
        match excluded(&q.dashboard, &q.panel) {
            Some(why) => println!("not waiting for data: {what} ({why})"),
            None => pending.push((what, expr)),
        }
    }
    let wanted = pending.len();
    let deadline = tokio::time::Instant::now() + skiff_testkit::EVENTUALLY;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (what, expr) in pending {
            if !has_data(&prometheus, &expr).await {
                still.push((what, expr));
            }
        }
        pending = still;
        if !pending.is_empty() && tokio::time::Instant::now() >= deadline {
            let names: Vec<&str> = pending.iter().map(|(what, _)| what.as_str()).collect();
            panic!("{} panel queries returned no data:\n  {}", names.len(), names.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("{wanted} panel queries returned data; {} were only parsed", panel_queries.len() - wanted);
    dns_upstream_task.abort();
}
