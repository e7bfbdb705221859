//! skiff-dns against a real etcd and apiserver. Services, Endpoints and Pods
//! are written directly (no controllers); queries go over UDP on loopback,
//! and names outside the cluster domain are forwarded to a fake upstream
//! DNS server running in this test process.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::{eventually, Cluster};
use tokio::net::UdpSocket;

#[path = "support/upstream.rs"]
mod upstream;
use upstream::fake_upstream;

const NS: &str = "default";

/// One query over UDP; None when nothing came back within 2 s.
async fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    socket.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await.ok()?.ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    assert_eq!(reply.metadata.id, msg.metadata.id);
    Some(reply)
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The answers' data, sorted, as text (`10.43.0.10`, `0 100 80 web...`).
fn answers(reply: &Message) -> Vec<String> {
    let mut v: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// Polls until `name` answers NOERROR with exactly `want`.
async fn expect_answers(server: SocketAddr, name: &str, rtype: RecordType, want: &[&str]) {
    eventually(&format!("{name} {rtype} = {want:?}"), || async {
        let reply = query(server, name, rtype).await?;
        (reply.metadata.response_code == ResponseCode::NoError && answers(&reply) == want).then_some(())
    })
    .await;
}

fn service(name: &str, cluster_ip: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"clusterIP": cluster_ip, "ports": ports, "selector": {"app": name}},
    })
}

async fn start() -> (Cluster, Client, SocketAddr, tokio::task::JoinHandle<()>) {
    let (upstream, upstream_task) = fake_upstream().await;
    let mut cluster = Cluster::start().await.expect("start cluster");
    let client = cluster.client();
    let port = skiff_testkit::free_port();
    let args = [format!("--listen=127.0.0.1:{port}"), format!("--upstream={upstream}")];
    cluster.start_service("dns", "skiff-dns", &args).await.expect("start skiff-dns");
    (cluster, client, SocketAddr::from(([127, 0, 0, 1], port)), upstream_task)
}

#[tokio::test]
async fn services_pods_and_forwarding() {
    let (_cluster, client, dns, upstream) = start().await;

    client
        .create("Service", NS, &service("web", "10.43.0.10", json!([{"name": "http", "port": 80, "protocol": "TCP"}])))
        .await
        .unwrap();
    client.create("Service", NS, &service("db", "None", json!([{"name": "pg", "port": 5432}]))).await.unwrap();
    client
        .create(
            "Endpoints",
            NS,
            &json!({
                "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db"},
                "subsets": [{
                    "addresses": [{"ip": "10.42.0.5", "hostname": "db-0"}, {"ip": "10.42.0.6"}],
                    "notReadyAddresses": [{"ip": "10.42.0.7"}],
                    "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                }],
            }),
        )
        .await
        .unwrap();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    let mut pod = client.create("Pod", NS, &pod).await.unwrap();
    pod["status"] = json!({"phase": "Running", "podIP": "10.42.1.9", "podIPs": [{"ip": "10.42.1.9"}]});
    client.update_status("Pod", NS, &pod).await.unwrap();

    // ClusterIP service, its SRV record, and case-insensitivity.
    expect_answers(dns, "web.default.svc.cluster.local.", RecordType::A, &["10.43.0.10"]).await;
    expect_answers(dns, "WEB.Default.svc.cluster.local.", RecordType::A, &["10.43.0.10"]).await;
    expect_answers(
        dns,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        &["0 100 80 web.default.svc.cluster.local."],
    )
    .await;

    // Headless: one A per ready address, per-address names, SRV per address.
    expect_answers(dns, "db.default.svc.cluster.local.", RecordType::A, &["10.42.0.5", "10.42.0.6"]).await;
    expect_answers(dns, "db-0.db.default.svc.cluster.local.", RecordType::A, &["10.42.0.5"]).await;
    expect_answers(
        dns,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        &["0 100 5432 10-42-0-6.db.default.svc.cluster.local.", "0 100 5432 db-0.db.default.svc.cluster.local."],
    )
    .await;

    // Pod A record.
    expect_answers(dns, "10-42-1-9.default.pod.cluster.local.", RecordType::A, &["10.42.1.9"]).await;

    // Unknown service and a search-expanded name: NXDOMAIN with the SOA.
    for name in ["nope.default.svc.cluster.local.", "web.default.svc.cluster.local.default.svc.cluster.local."] {
        let reply = query(dns, name, RecordType::A).await.expect("an answer");
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(reply.answers.is_empty(), "{name}");
        assert!(reply.metadata.authoritative, "{name}");
        assert!(reply.authorities.iter().any(|r| r.record_type() == RecordType::SOA), "{name}: SOA in authority");
    }
    // Existing name, other type: NOERROR without answers.
    let reply = query(dns, "web.default.svc.cluster.local.", RecordType::AAAA).await.expect("an answer");
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());

    // Forwarded to the fake upstream, NXDOMAIN passed through.
    expect_answers(dns, "www.example.test.", RecordType::A, &["192.0.2.1"]).await;
    let reply = query(dns, "missing.example.test.", RecordType::A).await.expect("an answer");
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    // A Service created now is served within a few seconds; one deleted goes.
    client
        .create("Service", NS, &service("late", "10.43.0.11", json!([{"name": "http", "port": 8080}])))
        .await
        .unwrap();
    expect_answers(dns, "late.default.svc.cluster.local.", RecordType::A, &["10.43.0.11"]).await;
    client.delete("Service", NS, "web").await.unwrap();
    eventually("web is gone", || async {
        let reply = query(dns, "web.default.svc.cluster.local.", RecordType::A).await?;
        (reply.metadata.response_code == ResponseCode::NXDomain).then_some(())
    })
    .await;

    upstream.abort();
}

#[tokio::test]
async fn forwarding_failure_is_servfail() {
    // An upstream that never answers: a bound socket nobody reads.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cluster = Cluster::start().await.expect("start cluster");
    let port = skiff_testkit::free_port();
    let args = [format!("--listen=127.0.0.1:{port}"), format!("--upstream={}", silent.local_addr().unwrap())];
    let metrics = cluster.start_service("dns", "skiff-dns", &args).await.expect("start skiff-dns");
    let dns = SocketAddr::from(([127, 0, 0, 1], port));

    // The resolver gives up after its timeout and retries (about 4 s).
    let reply = eventually("an answer for www.example.test", || async {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii("www.example.test.").unwrap(), RecordType::A));
        socket.send_to(&msg.to_vec().unwrap(), dns).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf)).await.ok()?.ok()?;
        Message::from_vec(&buf[..n]).ok()
    })
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);

    // The cluster zone still answers, and queries are counted.
    let reply =
        eventually("cluster zone answers", || query(dns, "nope.default.svc.cluster.local.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let body = http_get(metrics, "/metrics").await;
    assert!(body.contains(r#"skiff_dns_queries_total{rcode="SERVFAIL",type="A"}"#), "{body}");
    assert!(body.contains(r#"skiff_dns_queries_total{rcode="NXDOMAIN",type="A"}"#), "{body}");
    assert!(body.contains("skiff_dns_request_duration_seconds_bucket"), "{body}");
    assert!(http_get(metrics, "/readyz").await.to_lowercase().contains("ok"));
    drop(silent);
}

/// GET http://addr/path, the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to metrics");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// A StatefulSet behind a headless Service, on hollow nodes with the real
/// scheduler and controller-manager: each pod answers at its stable name
/// `NAME-i.SERVICE.NS.svc.cluster.local`, and a replaced pod's name follows
/// it to its new address.
#[tokio::test]
async fn stateful_set_pods_have_stable_dns_names() {
    let (mut cluster, client, dns, _upstream) = start().await;
    for (id, binary, args) in [
        ("kubelet", "skiff-kubelet", vec!["--hollow-nodes=2".to_string()]),
        ("scheduler", "skiff-scheduler", vec![]),
        ("controller-manager", "skiff-controller-manager", vec![]),
    ] {
        cluster.start_service(id, binary, &args).await.expect(id);
    }
    client.create("Service", NS, &service("db", "None", json!([{"name": "sql", "port": 5432}]))).await.unwrap();
    let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "db:1"}]}}}});
    client.create("StatefulSet", NS, &set).await.unwrap();
    let pod_ip = |name: &'static str| {
        let client = client.clone();
        async move {
            let pod = client.get("Pod", NS, name).await.ok()?;
            let conditions = pod["status"]["conditions"].as_array()?;
            if !conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
                return None;
            }
            let ip = pod["status"]["podIP"].as_str()?.to_string();
            Some((pod["metadata"]["uid"].as_str()?.to_string(), ip))
        }
    };
    let (uid0, ip0) = eventually("db-0 ready", || pod_ip("db-0")).await;
    let (_, ip1) = eventually("db-1 ready", || pod_ip("db-1")).await;
    expect_answers(dns, "db-0.db.default.svc.cluster.local.", RecordType::A, &[&ip0]).await;
    expect_answers(dns, "db-1.db.default.svc.cluster.local.", RecordType::A, &[&ip1]).await;

    client.delete("Pod", NS, "db-0").await.unwrap();
    let (_, new_ip) = eventually("db-0 back", || async {
        let (uid, ip) = pod_ip("db-0").await?;
        (uid != uid0).then_some((uid, ip))
    })
    .await;
    expect_answers(dns, "db-0.db.default.svc.cluster.local.", RecordType::A, &[&new_ip]).await;
}
