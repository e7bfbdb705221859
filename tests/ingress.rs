//! skiff-ingress against a real etcd and apiserver, with upstream HTTP
//! servers on loopback as the Services' endpoints. Services and Endpoints
//! are written directly (no controllers, no pods), so each test decides
//! exactly which endpoints exist; requests go through skiff-ingress' own
//! listener on loopback.

use std::net::SocketAddr;

use serde_json::{json, Value};
use skiff_client::Client;
use skiff_testkit::{eventually, free_port, Cluster};

#[path = "support/http.rs"]
mod http;
#[path = "support/tls.rs"]
mod tls;
use http::{get, Conn, Upstream};

const NS: &str = "default";

/// skiff-ingress' addresses: plain HTTP, HTTPS, and its /metrics.
struct Ingress {
    http: SocketAddr,
    https: SocketAddr,
    metrics: SocketAddr,
}

async fn start_ingress() -> (Cluster, Client, Ingress) {
    let mut cluster = Cluster::start().await.expect("start cluster");
    let client = cluster.client();
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = [format!("--http-listen={http}"), format!("--https-listen={https}"), "--shutdown-grace=10s".to_string()];
    let metrics = cluster.start_service("ingress", "skiff-ingress", &args).await.expect("start skiff-ingress");
    (cluster, client, Ingress { http, https, metrics })
}

async fn start() -> (Cluster, Client, SocketAddr, SocketAddr) {
    let (cluster, client, ingress) = start_ingress().await;
    (cluster, client, ingress.http, ingress.metrics)
}

/// A Service `name` with port 80 (`http`), and Endpoints listing `upstreams`.
async fn backend(client: &Client, name: &str, upstreams: &[SocketAddr]) {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    client.create("Service", NS, &svc).await.expect("create service");
    set_endpoints(client, name, upstreams).await;
}

async fn set_endpoints(client: &Client, name: &str, upstreams: &[SocketAddr]) {
    let subsets: Vec<Value> = upstreams
        .iter()
        .map(|a| json!({"addresses": [{"ip": a.ip().to_string()}], "ports": [{"name": "http", "port": a.port()}]}))
        .collect();
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name}, "subsets": subsets});
    match client.get("Endpoints", NS, name).await {
        Ok(mut current) => {
            current["subsets"] = json!(subsets);
            client.update("Endpoints", NS, &current).await.expect("update endpoints");
        }
        Err(_) => {
            client.create("Endpoints", NS, &eps).await.expect("create endpoints");
        }
    }
}

fn ingress(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name}, "spec": spec})
}

/// An Ingress spec of `class` with one host rule.
fn rule(class: &str, host: &str, paths: Vec<Value>) -> Value {
    json!({"ingressClassName": class, "rules": [{"host": host, "http": {"paths": paths}}]})
}

async fn create_ingress(client: &Client, name: &str, spec: Value) {
    client.create("Ingress", NS, &ingress(name, spec)).await.expect("create ingress");
}

fn path(p: &str, kind: &str, service: &str) -> Value {
    json!({"path": p, "pathType": kind, "backend": {"service": {"name": service, "port": {"number": 80}}}})
}

/// Waits until `host` + `path` answers 200 from upstream `want`.
async fn wait_routed(listen: SocketAddr, host: &str, path: &str, want: &str) {
    eventually(&format!("{host}{path} served by {want}"), || async {
        let r = get(listen, host, path).await.ok()?;
        (r.status == 200 && r.body == want).then_some(())
    })
    .await;
}

/// Waits for a Warning Event `reason` about `object` whose message holds
/// `message_part`.
async fn wait_warning(client: &Client, object: &str, reason: &str, message_part: &str) {
    eventually(&format!("a {reason} warning about {object}"), || async {
        let events = client.list("Event", NS, &Default::default()).await.ok()?;
        events
            .items
            .iter()
            .find(|e| {
                e["involvedObject"]["name"] == object
                    && e["reason"] == reason
                    && e["type"] == "Warning"
                    && e["message"].as_str().is_some_and(|m| m.contains(message_part))
            })
            .map(|_| ())
    })
    .await;
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = get(addr, "localhost", "/metrics").await.expect("scrape").body;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn routes_by_host_and_path_and_answers_for_what_it_cannot_serve() {
    let (_cluster, client, listen, metrics) = start().await;
    let (web_a, web_b, api) =
        (Upstream::start("web-a").await, Upstream::start("web-b").await, Upstream::start("api").await);
    backend(&client, "web", &[web_a.addr, web_b.addr]).await;
    backend(&client, "api", &[api.addr]).await;
    create_ingress(
        &client,
        "shop",
        rule("skiff", "shop.example.test", vec![path("/", "Prefix", "web"), path("/api", "Prefix", "api")]),
    )
    .await;
    create_ingress(&client, "broken", rule("skiff", "broken.example.test", vec![path("/", "Prefix", "missing")])).await;
    create_ingress(&client, "someone-elses", rule("nginx", "nginx.example.test", vec![path("/", "Prefix", "web")]))
        .await;
    wait_routed(listen, "shop.example.test", "/api/users", "api").await;

    // Round robin over both endpoints of web; /api is longer, so it wins.
    let mut bodies = Vec::new();
    for _ in 0..6 {
        let r = get(listen, "shop.example.test", "/index.html").await.unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert_eq!(bodies.iter().filter(|b| *b == "web-a").count(), 3, "{bodies:?}");
    assert_eq!(bodies.iter().filter(|b| *b == "web-b").count(), 3, "{bodies:?}");
    assert_eq!(get(listen, "SHOP.example.test:8080", "/apis").await.unwrap().body.trim_end_matches(['a', 'b']), "web-");

    // What the upstream saw.
    let r = get(listen, "shop.example.test", "/api").await.unwrap();
    assert_eq!(r.header("x-seen-host"), Some("shop.example.test"));
    assert_eq!(r.header("x-seen-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-seen-x-forwarded-host"), Some("shop.example.test"));
    assert!(r.header("x-seen-x-request-id").is_some_and(|id| id.len() >= 16), "{r:?}");
    let mut conn = Conn::connect(listen).await.unwrap();
    let r = conn
        .send("GET", "shop.example.test", "/api", &[("X-Request-Id", "abc-123"), ("X-Forwarded-For", "192.0.2.7")], b"")
        .await
        .unwrap();
    assert_eq!(r.header("x-seen-x-request-id"), Some("abc-123"));
    assert_eq!(r.header("x-seen-x-forwarded-for"), Some("192.0.2.7, 127.0.0.1"));

    // Counted by the rule matched, not by what the client sent.
    let api_ok = r#"skiff_ingress_requests_total{code="200",host="shop.example.test",ingress="default/shop",path="/api",service="default/api"}"#;
    assert!(metric(metrics, api_ok).await >= 3.0, "{api_ok}");

    // Unknown host, another class's Ingress: the default backend's 404.
    assert_eq!(get(listen, "nowhere.example.test", "/").await.unwrap().status, 404);
    assert_eq!(get(listen, "nginx.example.test", "/").await.unwrap().status, 404);

    // A missing Service: 503 naming it, and a Warning Event on the Ingress.
    let r = get(listen, "broken.example.test", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("service default/missing not found"), "{r:?}");
    wait_warning(&client, "broken", "BackendUnavailable", "default/missing").await;

    // The Service appears: served without anyone touching the Ingress.
    backend(&client, "missing", &[api.addr]).await;
    wait_routed(listen, "broken.example.test", "/", "api").await;

    // status.loadBalancer on ours, not on the other class's.
    eventually("status.loadBalancer of ingress shop", || async {
        let ing = client.get("Ingress", NS, "shop").await.ok()?;
        (ing["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
    })
    .await;
    let other = client.get("Ingress", NS, "someone-elses").await.unwrap();
    assert!(other["status"]["loadBalancer"]["ingress"].is_null(), "{other}");
}

#[tokio::test]
async fn a_dead_endpoint_is_retried_elsewhere_and_then_left_out() {
    let (_cluster, client, listen, metrics) = start().await;
    let live = Upstream::start("live").await;
    // A port nothing listens on: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    backend(&client, "web", &[live.addr, dead]).await;
    create_ingress(&client, "web", rule("skiff", "web.example.test", vec![path("/", "Prefix", "web")])).await;
    wait_routed(listen, "web.example.test", "/", "live").await;

    let mut conn = Conn::connect(listen).await.unwrap();
    for i in 0..20 {
        let r = conn.send("POST", "web.example.test", "/orders", &[], b"{}").await.unwrap();
        assert_eq!((i, r.status, r.body.as_str()), (i, 200, "live"));
    }
    let errors = metric(metrics, "skiff_ingress_upstream_connect_errors_total").await;
    // Refused once, then ejected for fail-timeout (10 s) rather than tried again.
    assert!((1.0..=2.0).contains(&errors), "connect errors: {errors}");
}

#[tokio::test]
async fn edits_under_load_drop_no_request_and_take_effect() {
    let (_cluster, client, listen, _) = start().await;
    let (blue, green) = (Upstream::start("blue").await, Upstream::start("green").await);
    backend(&client, "blue", &[blue.addr]).await;
    backend(&client, "green", &[green.addr]).await;
    let spec = |svc: &str| rule("skiff", "app.example.test", vec![path("/", "Prefix", svc)]);
    client.create("Ingress", NS, &ingress("app", spec("blue"))).await.unwrap();
    wait_routed(listen, "app.example.test", "/", "blue").await;

    // Four keep-alive clients request without pause while the Ingress flips
    // between the two Services and the Endpoints change under it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::connect(listen).await.expect("connect");
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r =
                    conn.send("GET", "app.example.test", "/", &[], b"").await.expect("request on an open connection");
                assert_eq!(r.status, 200, "{r:?}");
                served += 1;
            }
            served
        }));
    }
    for round in 0..6 {
        let svc = if round % 2 == 0 { "green" } else { "blue" };
        // A patch, as `kubectl edit` would retry: skiff-ingress writes the
        // Ingress's status meanwhile, so a read-then-update may conflict.
        client.patch("Ingress", NS, "app", &json!({"spec": spec(svc)})).await.unwrap();
        wait_routed(listen, "app.example.test", "/", svc).await;
        set_endpoints(&client, svc, &[if svc == "green" { green.addr } else { blue.addr }]).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        assert!(c.await.expect("client") > 0);
    }
    wait_routed(listen, "app.example.test", "/", "blue").await;
}

#[tokio::test]
async fn annotations_limit_bodies_and_pin_clients() {
    let (_cluster, client, listen, _) = start().await;
    let ups = [Upstream::start("one").await, Upstream::start("two").await, Upstream::start("three").await];
    backend(&client, "web", &ups.iter().map(|u| u.addr).collect::<Vec<_>>()).await;
    let mut ing = ingress("web", rule("skiff", "web.example.test", vec![path("/", "Prefix", "web")]));
    ing["metadata"]["annotations"] =
        json!({"skiff.io/proxy-body-size": "1k", "skiff.io/upstream-hash-by": "header:X-User"});
    client.create("Ingress", NS, &ing).await.unwrap();
    eventually("web.example.test served", || async {
        (get(listen, "web.example.test", "/").await.ok()?.status == 200).then_some(())
    })
    .await;

    let mut conn = Conn::connect(listen).await.unwrap();
    let small = conn.send("POST", "web.example.test", "/", &[], &[b'x'; 512]).await.unwrap();
    assert_eq!(small.status, 200);
    let big =
        Conn::connect(listen).await.unwrap().send("POST", "web.example.test", "/", &[], &[b'x'; 4096]).await.unwrap();
    assert_eq!(big.status, 413);

    for user in ["ada", "grace", "linus", "barbara"] {
        let first = conn.send("GET", "web.example.test", "/", &[("X-User", user)], b"").await.unwrap().body;
        for _ in 0..5 {
            let again = conn.send("GET", "web.example.test", "/", &[("X-User", user)], b"").await.unwrap().body;
            assert_eq!(again, first, "user {user} moved");
        }
    }
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let (mut cluster, client, listen, _) = start().await;
    let slow = Upstream::start("slow").await;
    backend(&client, "slow", &[slow.addr]).await;
    create_ingress(&client, "slow", rule("skiff", "slow.example.test", vec![path("/", "Prefix", "slow")])).await;
    wait_routed(listen, "slow.example.test", "/", "slow").await;

    let in_flight = tokio::spawn(async move { get(listen, "slow.example.test", "/slow?ms=1500").await });
    eventually("the slow request reached the upstream", || async {
        // The upstream counts a request once answered; wait for the ingress
        // to have it open instead, by its own gauge.
        let m = cluster.service("ingress")?.metrics;
        (metric(m, "skiff_ingress_active_requests").await >= 1.0).then_some(())
    })
    .await;
    tokio::task::spawn_blocking(move || {
        cluster.stop_service("ingress");
        cluster
    })
    .await
    .unwrap();
    let r = in_flight.await.unwrap().expect("the request in flight was answered");
    assert_eq!((r.status, r.body.as_str()), (200, "slow"));
    assert!(get(listen, "slow.example.test", "/").await.is_err(), "still accepting after shutdown");
}

/// A self-signed certificate for `host`: (certificate PEM, key PEM).
fn certificate(host: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn tls_secret(name: &str, (crt, key): &(String, String)) -> Value {
    // k8s-openapi writes ByteString data as base64, as the API wants it.
    let data = [("tls.crt", crt), ("tls.key", key)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
        .collect();
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    };
    let mut value = serde_json::to_value(secret).unwrap();
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Secret");
    value
}

/// One HTTPS request with SNI `host`, trusting only `trusted` (a PEM
/// certificate): the response, or the handshake's error.
async fn https_get(addr: SocketAddr, host: &str, trusted: &str, path: &str) -> Result<http::Response, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls::connect(&addr.to_string(), host, trusted.as_bytes()).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A peer closing without close_notify is fine here: the body is whole.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no response: {text:?}"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    Ok(http::Response { status, headers, body: body.to_string() })
}

#[tokio::test]
async fn tls_by_sni_with_certificates_from_secrets_and_a_redirect() {
    let (_cluster, client, proxy) = start_ingress().await;
    let (shop, blog) = (Upstream::start("shop").await, Upstream::start("blog").await);
    backend(&client, "shop", &[shop.addr]).await;
    backend(&client, "blog", &[blog.addr]).await;
    let shop_cert = certificate("shop.example.test");
    let blog_cert = certificate("blog.example.test");
    client.create("Secret", NS, &tls_secret("shop-tls", &shop_cert)).await.unwrap();
    client.create("Secret", NS, &tls_secret("blog-tls", &blog_cert)).await.unwrap();
    client
        .create(
            "Ingress",
            NS,
            &ingress(
                "sites",
                json!({"ingressClassName": "skiff",
                    "tls": [{"hosts": ["shop.example.test"], "secretName": "shop-tls"},
                            {"hosts": ["blog.example.test"], "secretName": "blog-tls"}],
                    "rules": [
                        {"host": "shop.example.test", "http": {"paths": [path("/", "Prefix", "shop")]}},
                        {"host": "blog.example.test", "http": {"paths": [path("/", "Prefix", "blog")]}}]}),
            ),
        )
        .await
        .unwrap();

    // Each host gets its own certificate, chosen by SNI.
    let r = eventually("shop over TLS", || async {
        https_get(proxy.https, "shop.example.test", &shop_cert.0, "/cart").await.ok()
    })
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "shop"));
    assert_eq!(r.header("x-seen-x-forwarded-proto"), Some("https"));
    let r = https_get(proxy.https, "blog.example.test", &blog_cert.0, "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "blog"));
    let wrong = https_get(proxy.https, "blog.example.test", &shop_cert.0, "/").await;
    assert!(wrong.is_err(), "blog must not be served shop's certificate: {wrong:?}");

    // Plain HTTP for a TLS host is redirected, path and query kept.
    let r = get(proxy.http, "shop.example.test", "/cart?item=7").await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://shop.example.test:{}/cart?item=7", proxy.https.port()).as_str())
    );

    // A renewed Secret is served from the next handshake on.
    let renewed = certificate("shop.example.test");
    let mut current = client.get("Secret", NS, "shop-tls").await.unwrap();
    current["data"] = tls_secret("shop-tls", &renewed)["data"].clone();
    client.update("Secret", NS, &current).await.unwrap();
    eventually("the renewed certificate", || async {
        https_get(proxy.https, "shop.example.test", &renewed.0, "/").await.ok()
    })
    .await;

    // A Secret that is no certificate: the host keeps the one it had, the
    // Ingress gets a Warning, and the other host is untouched.
    let mut current = client.get("Secret", NS, "blog-tls").await.unwrap();
    current["data"]["tls.crt"] = json!("bm90IGEgY2VydGlmaWNhdGU=");
    client.update("Secret", NS, &current).await.unwrap();
    wait_warning(&client, "sites", "InvalidCertificate", "default/blog-tls").await;
    let r = https_get(proxy.https, "blog.example.test", &blog_cert.0, "/").await.unwrap();
    assert_eq!(r.body, "blog");
    let r = https_get(proxy.https, "shop.example.test", &renewed.0, "/").await.unwrap();
    assert_eq!(r.body, "shop");
}

#[tokio::test]
async fn load_balancer_services_answer_tcp_and_udp_on_a_pool_address() {
    let (cluster, client, _) = start_ingress().await;
    let web = Upstream::start("web").await;
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let (tcp_port, udp_port) = (free_port(), free_port());
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge"},
        "spec": {"type": "LoadBalancer", "ports": [
            {"name": "http", "port": tcp_port, "targetPort": 8080},
            {"name": "dns", "port": udp_port, "protocol": "UDP", "targetPort": 53}]}});
    client.create("Service", NS, &svc).await.unwrap();
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "edge"}, "subsets": [
        {"addresses": [{"ip": "127.0.0.1"}], "ports": [
            {"name": "http", "port": web.addr.port()},
            {"name": "dns", "port": echo_addr.port(), "protocol": "UDP"}]}]});
    client.create("Endpoints", NS, &eps).await.unwrap();

    eventually("status.loadBalancer of service edge", || async {
        let svc = client.get("Service", NS, "edge").await.ok()?;
        (svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
    })
    .await;
    let lb = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let r = eventually("the load balancer's TCP port", || async { get(lb, "edge", "/").await.ok() }).await;
    assert_eq!((r.status, r.body.as_str()), (200, "web"));
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(("127.0.0.1", udp_port)).await.unwrap();
    let reply = eventually("the load balancer's UDP port echoes", || async {
        udp.send(b"ping").await.ok()?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_millis(500), udp.recv(&mut buf)).await.ok()?.ok()?;
        Some(buf[..n].to_vec())
    })
    .await;
    assert_eq!(reply, b"ping");
    let out = cluster.skiffctl(&["get", "svc", "edge"], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().nth(1).is_some_and(|l| l.contains("LoadBalancer") && l.contains("127.0.0.1")), "{text}");

    // The same port again: no address has it free, so it waits, told why.
    let clash = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "clash"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": tcp_port}]}});
    client.create("Service", NS, &clash).await.unwrap();
    wait_warning(&client, "clash", "AllocationFailed", "").await;
    let clash = client.get("Service", NS, "clash").await.unwrap();
    assert!(clash["status"]["loadBalancer"]["ingress"].is_null(), "{clash}");
}

/// `skiffctl apply -f -` of `yaml`, which must succeed.
fn apply(cluster: &Cluster, yaml: &str) {
    let out = cluster.skiffctl(&["apply", "-f", "-"], Some(yaml)).unwrap();
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The pod that answered: skiff-testserver's body starts with
/// `hostname: NAME`, and a pod's hostname is its name.
fn answered_by(body: &str) -> String {
    body.lines().find_map(|l| l.strip_prefix("hostname: ")).unwrap_or("").trim().to_string()
}

/// The names of the ready pods behind Service `name`, from its Endpoints.
async fn ready_pods(client: &Client, name: &str) -> std::collections::BTreeSet<String> {
    let Ok(eps) = client.get("Endpoints", NS, name).await else { return Default::default() };
    eps["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a["targetRef"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Real pods on the three-host harness behind skiff-ingress on host-1:
/// host and path rules reach pods on every host, and deleting a backend
/// pod under steady load costs no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_to_pods_across_hosts_and_a_deleted_pod_costs_no_request() {
    let options = skiff_testkit::NetworkOptions { hosts: 3, ..Default::default() };
    let mut cluster =
        Cluster::start_with(skiff_testkit::ClusterOptions { network: Some(options), ..Default::default() })
            .await
            .expect("start a networked cluster");
    let client = cluster.client();
    let host = cluster.network().unwrap().hosts()[0].host.clone();
    let listen = SocketAddr::from((host.ip(), 80));
    let args = [format!("--http-listen={listen}"), "--no-https".to_string()];
    cluster.start_service_in(&host, "ingress", "skiff-ingress", &args, false).await.expect("start skiff-ingress");

    let image = cluster.network().unwrap().registry().image("testserver:latest");
    let deployment = |name: &str, replicas: u32| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
        )
    };
    apply(&cluster, &deployment("web", 3));
    apply(&cluster, &deployment("api", 2));
    apply(
        &cluster,
        &format!(
            r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: shop, namespace: {NS}}}
spec:
  ingressClassName: skiff
  rules:
  - host: shop.example.test
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}
      - {{path: /echo/api, pathType: Prefix, backend: {{service: {{name: api, port: {{number: 80}}}}}}}}
"#
        ),
    );
    let web = eventually("three ready web pods and two api pods", || async {
        let web = ready_pods(&client, "web").await;
        (web.len() == 3 && ready_pods(&client, "api").await.len() == 2).then_some(web)
    })
    .await;
    let pods = client.list("Pod", NS, &Default::default()).await.unwrap();
    let web_hosts: std::collections::BTreeSet<&str> = pods
        .items
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web")
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert!(web_hosts.len() >= 2, "the web pods were spread over hosts: {web_hosts:?}");

    // Every web pod answers through the ingress, wherever it runs;
    // /echo/api goes to the api pods only.
    let seen = eventually("every web pod answers through the ingress", || async {
        let mut conn = Conn::connect(listen).await.ok()?;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let r = conn.send("GET", "shop.example.test", "/", &[], b"").await.ok()?;
            seen.insert(answered_by(&r.body));
        }
        (seen == web).then_some(seen)
    })
    .await;
    assert_eq!(seen, web);
    let api = ready_pods(&client, "api").await;
    for _ in 0..6 {
        let r = get(listen, "shop.example.test", "/echo/api/orders").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(api.contains(&answered_by(&r.body)), "{} is not an api pod", answered_by(&r.body));
    }

    // Steady load from two keep-alive clients while a web pod is deleted:
    // every request still gets a 2xx.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut conn = Conn::connect(listen).await.expect("connect");
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let closed = match conn.send("GET", "shop.example.test", "/", &[], b"").await {
                        Ok(r) => {
                            if (200..300).contains(&r.status) {
                                ok += 1;
                            } else {
                                failed.push(format!("{} {}", r.status, r.body.trim()));
                            }
                            r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                        }
                        Err(e) => {
                            failed.push(e.to_string());
                            true
                        }
                    };
                    if closed {
                        conn = Conn::connect(listen).await.expect("reconnect");
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let victim = web.iter().next().unwrap().clone();
    client.delete("Pod", NS, &victim).await.expect("delete a web pod");
    eventually("the deleted pod left the Endpoints and a replacement is ready", || async {
        let now = ready_pods(&client, "web").await;
        (now.len() == 3 && !now.contains(&victim)).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(ok > 0, "no request was served during the deletion");
        assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok as usize + failed.len());
    }
}

/// HTTP/2 end to end: a gRPC client speaking h2c to skiff-ingress, routed by
/// the defaultBackend to a gRPC server over h2c: the apiserver of a second,
/// insecure cluster (a secure one speaks only TLS).
#[tokio::test]
async fn grpc_over_h2c_through_the_default_backend() {
    let (_cluster, client, proxy) = start_ingress().await;
    let grpc = Cluster::start_with(skiff_testkit::ClusterOptions { insecure: true, ..Default::default() })
        .await
        .expect("start the backend cluster");
    let grpc_client = grpc.client();
    let apiserver: SocketAddr = grpc.server().trim_start_matches("http://").parse().unwrap();
    backend(&client, "apiserver", &[apiserver]).await;
    let mut ing = ingress(
        "grpc",
        json!({"ingressClassName": "skiff", "defaultBackend": {"service": {"name": "apiserver", "port": {"name": "http"}}}}),
    );
    ing["metadata"]["annotations"] = json!({"skiff.io/backend-protocol": "GRPC"});
    client.create("Ingress", NS, &ing).await.unwrap();

    let through = Client::new(&format!("http://{}", proxy.http)).unwrap();
    let namespaces = eventually("a gRPC list through the ingress", || async {
        through.list("Namespace", "", &Default::default()).await.ok()
    })
    .await;
    assert!(namespaces.items.iter().any(|n| n["metadata"]["name"] == "default"), "{:?}", namespaces.items);
    let created = through
        .create("ConfigMap", NS, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "via-ingress"}}))
        .await
        .expect("a gRPC write through the ingress");
    assert_eq!(created["metadata"]["name"], "via-ingress");
    grpc_client.get("ConfigMap", NS, "via-ingress").await.expect("the write reached the apiserver");
}

/// A WebSocket upgrade passes through: 101, then bytes both ways.
#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (_cluster, client, listen, _) = start().await;
    let ws = Upstream::start("ws").await;
    backend(&client, "ws", &[ws.addr]).await;
    let rules = rule("skiff", "ws.example.test", vec![path("/", "Prefix", "ws")]);
    client.create("Ingress", NS, &ingress("ws", rules)).await.unwrap();
    wait_routed(listen, "ws.example.test", "/", "ws").await;

    let mut stream = tokio::io::BufReader::new(tokio::net::TcpStream::connect(listen).await.unwrap());
    let upgrade = "GET /chat HTTP/1.1\r\nHost: ws.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.get_mut().write_all(upgrade.as_bytes()).await.unwrap();
    let mut status = String::new();
    stream.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status:?}");
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    for message in ["hello", "over the tunnel"] {
        stream.get_mut().write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
}

/// Garbage, oversized heads and half-sent requests get an error or a
/// closed connection, never a wedged or dead proxy; a slow endpoint past
/// its read timeout gets a 504.
#[tokio::test]
async fn hostile_clients_and_slow_endpoints_leave_the_proxy_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cluster, client, listen, _) = start().await;
    let up = Upstream::start("up").await;
    backend(&client, "up", &[up.addr]).await;
    let mut ing = ingress("up", rule("skiff", "up.example.test", vec![path("/", "Prefix", "up")]));
    ing["metadata"]["annotations"] = json!({"skiff.io/proxy-read-timeout": "1s"});
    client.create("Ingress", NS, &ing).await.unwrap();
    wait_routed(listen, "up.example.test", "/", "up").await;

    let huge_header = format!("GET / HTTP/1.1\r\nHost: up.example.test\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let hostile: [&[u8]; 4] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-that-is-a-tls-hello",
        b"GET / HTTP/9.9\r\nHost: up.example.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: up.example.test\r\nContent-Length: -5\r\n\r\n",
        huge_header.as_bytes(),
    ];
    for bytes in hostile {
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        let _ = s.write_all(bytes).await;
        let mut reply = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut reply)).await;
        assert!(
            read.is_ok(),
            "the proxy neither answered nor closed after {:?}",
            String::from_utf8_lossy(&bytes[..40])
        );
        if !reply.is_empty() {
            let text = String::from_utf8_lossy(&reply);
            assert!(text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"), "{text}");
        }
    }
    // Half a request, or one without a version, left hanging (until the
    // 60 s header timeout, as nginx's) holds nothing up for anyone else.
    let mut half = tokio::net::TcpStream::connect(listen).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: up.exa").await.unwrap();
    let mut versionless = tokio::net::TcpStream::connect(listen).await.unwrap();
    versionless.write_all(b"GET /\r\n\r\n").await.unwrap();
    let r = get(listen, "up.example.test", "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "up"));

    let slow = get(listen, "up.example.test", "/slow?ms=3000").await.unwrap();
    assert_eq!(slow.status, 504, "{slow:?}");
    assert_eq!(get(listen, "up.example.test", "/").await.unwrap().status, 200);
}
