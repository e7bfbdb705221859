//! The REST front refuses bad input as kube-apiserver does, with a Status
//! naming the reason (and the field), and changes nothing: malformed and
//! oversized bodies, invalid objects, unknown paths and media types, stale
//! writes, and watches from compacted history (410, the client relists).
//!
//! Build first: `cargo build -p skiff-apiserver && cargo test -p skiff-tests --test rest`.

#[path = "support/http.rs"]
mod http;

use serde_json::{json, Value};
use skiff_testkit::{Cluster, ClusterOptions};

struct Rest {
    conn: http::Conn,
}

impl Rest {
    async fn send(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let headers = [("Content-Type", content_type), ("Accept", "application/json")];
        let response = self.conn.send(method, "skiff", path, &headers, body).await.expect("the REST API answers");
        let body = serde_json::from_str(&response.body).unwrap_or(Value::String(response.body.clone()));
        (response.status, body)
    }

    async fn json(&mut self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.send(method, path, "application/json", body.to_string().as_bytes()).await
    }
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
}

/// A Status's reason and code, checked to be a Failure Status.
fn status(body: &Value) -> (&str, i64) {
    assert_eq!((body["kind"].as_str(), body["status"].as_str()), (Some("Status"), Some("Failure")), "{body}");
    (body["reason"].as_str().unwrap_or_default(), body["code"].as_i64().unwrap_or_default())
}

#[tokio::test]
async fn bad_requests_get_kubernetes_statuses_and_change_nothing() {
    let cluster = Cluster::start_with(ClusterOptions { insecure: true, ..Default::default() }).await.unwrap();
    let mut rest = Rest { conn: http::Conn::connect(cluster.rest_listen()).await.unwrap() };
    let deployments = "/apis/apps/v1/namespaces/default/deployments";

    let (code, body) = rest.send("GET", "/api/v1/nothings", "", b"").await;
    assert_eq!((code, status(&body)), (404, ("NotFound", 404)));
    let (code, body) = rest.send("POST", deployments, "application/json", b"{not json").await;
    assert_eq!((code, status(&body).0), (400, "BadRequest"));
    let (code, body) = rest.json("POST", deployments, &deployment("web", -1)).await;
    assert_eq!((code, status(&body)), (422, ("Invalid", 422)));
    assert_eq!(body["details"]["causes"][0]["field"], "spec.replicas", "{body}");
    let (code, body) = rest
        .json(
            "POST",
            deployments,
            &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "typo"}, "spec": {"replicaz": 1}}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("spec.replicaz"), "{body}");
    let huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"},
                      "data": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let (code, body) = rest.json("POST", "/api/v1/namespaces/default/configmaps", &huge).await;
    assert_eq!((code, status(&body).0), (413, "RequestEntityTooLarge"), "{body}");
    let (code, list) = rest.send("GET", deployments, "", b"").await;
    assert_eq!((code, list["items"].as_array().map(Vec::len)), (200, Some(0)), "nothing was stored: {list}");

    let (code, created) = rest.json("POST", deployments, &deployment("web", 1)).await;
    assert_eq!(code, 201, "{created}");
    let (code, body) = rest.json("POST", deployments, &deployment("web", 1)).await;
    assert_eq!((code, status(&body)), (409, ("AlreadyExists", 409)));
    assert_eq!(body["details"]["name"], "web");
    let mut stale = created.clone();
    rest.json("PUT", &format!("{deployments}/web"), &created).await;
    let (code, _) = rest
        .send("PATCH", &format!("{deployments}/web"), "application/merge-patch+json", br#"{"spec":{"replicas":2}}"#)
        .await;
    assert_eq!(code, 200);
    stale["spec"]["replicas"] = json!(5);
    let (code, body) = rest.json("PUT", &format!("{deployments}/web"), &stale).await;
    assert_eq!((code, status(&body).0), (409, "Conflict"), "a write from a stale resourceVersion");
    let (code, body) = rest.send("PATCH", &format!("{deployments}/web"), "text/plain", b"replicas=3").await;
    assert_eq!((code, status(&body).0), (415, "UnsupportedMediaType"));
    let (code, body) = rest
        .send(
            "PATCH",
            &format!("{deployments}/web"),
            "application/json-patch+json",
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
        )
        .await;
    assert_eq!((code, status(&body).0), (400, "BadRequest"), "{body}");
    let (_, current) = rest.send("GET", &format!("{deployments}/web"), "", b"").await;
    assert_eq!(current["spec"]["replicas"], 2, "refused writes changed nothing");

    // A watch from history neither the watch cache (which holds what
    // happened since the apiserver started) nor etcd (compacted) still
    // has: 410 Expired, and the client relists.
    rest.send("PATCH", &format!("{deployments}/web"), "application/merge-patch+json", br#"{"spec":{"replicas":3}}"#)
        .await;
    let mut etcd = cluster.etcd_client().await.unwrap();
    let now = etcd.get("/", None).await.unwrap().header().unwrap().revision();
    etcd.compact(now, None).await.unwrap();
    // A restarted apiserver's watch cache starts after the compaction.
    let mut cluster = cluster;
    cluster.restart_apiserver().await.unwrap();
    let mut rest = Rest { conn: http::Conn::connect(cluster.rest_listen()).await.unwrap() };
    let watch = format!("{deployments}?watch=1&resourceVersion=1&timeoutSeconds=10");
    let (code, body) = rest.send("GET", &watch, "", b"").await;
    let expired = match code {
        410 => body,
        200 => {
            // One event parses as an object; several stay text, a line each.
            let event = match body.as_str() {
                Some(lines) => serde_json::from_str(lines.lines().last().unwrap_or_default()).expect("an event"),
                None => body,
            };
            assert_eq!(event["type"], "ERROR", "{event}");
            event["object"].clone()
        }
        other => panic!("watch from compacted history answered {other}: {body}"),
    };
    assert_eq!(status(&expired), ("Expired", 410));
}

/// Lists at a version, as kube-apiserver serves them: `Exact` shows the
/// objects as they were then (from etcd's history), `NotOlderThan` at least
/// that new, `0` whatever the cache holds; a version not reached yet is 504
/// Timeout, a bad combination 400 naming the field.
#[tokio::test]
async fn lists_at_a_resource_version_show_that_state() {
    let cluster = Cluster::start_with(ClusterOptions { insecure: true, ..Default::default() }).await.unwrap();
    let mut rest = Rest { conn: http::Conn::connect(cluster.rest_listen()).await.unwrap() };
    let maps = "/api/v1/namespaces/default/configmaps";
    let config_map = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    let (code, first) = rest.json("POST", maps, &config_map("first")).await;
    assert_eq!(code, 201, "{first}");
    let then = first["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (code, _) = rest.json("POST", maps, &config_map("second")).await;
    assert_eq!(code, 201);
    let names = |list: &Value| -> Vec<String> {
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items.iter().filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string)).collect()
    };

    let (code, exact) =
        rest.send("GET", &format!("{maps}?resourceVersion={then}&resourceVersionMatch=Exact"), "", b"").await;
    assert_eq!((code, names(&exact)), (200, vec!["first".to_string()]), "{exact}");
    assert_eq!(exact["metadata"]["resourceVersion"], then.as_str(), "the list is at that version");
    let (code, newer) =
        rest.send("GET", &format!("{maps}?resourceVersion={then}&resourceVersionMatch=NotOlderThan"), "", b"").await;
    assert_eq!((code, names(&newer)), (200, vec!["first".to_string(), "second".to_string()]), "{newer}");
    let (code, any) = rest.send("GET", &format!("{maps}?resourceVersion=0"), "", b"").await;
    assert_eq!((code, names(&any).len()), (200, 2), "{any}");

    let future = then.parse::<i64>().unwrap() + 1_000_000;
    let (code, body) =
        rest.send("GET", &format!("{maps}?resourceVersion={future}&resourceVersionMatch=Exact"), "", b"").await;
    assert_eq!((code, status(&body)), (504, ("Timeout", 504)), "{body}");
    let (code, body) = rest.send("GET", &format!("{maps}?resourceVersionMatch=Exact"), "", b"").await;
    assert_eq!((code, status(&body).0), (400, "BadRequest"));
    assert!(body["message"].as_str().unwrap_or_default().contains("resourceVersionMatch"), "{body}");
    let (code, body) =
        rest.send("GET", &format!("{maps}?resourceVersion={then}&resourceVersionMatch=Sometime"), "", b"").await;
    assert_eq!((code, status(&body).0), (400, "BadRequest"), "{body}");
}
