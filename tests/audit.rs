//! The apiserver's audit log: every mutating request of a run, and none of
//! the reads, as audit.k8s.io/v1 Events (JSON lines), failures included.

use serde_json::{json, Value};
use skiff_testkit::{eventually, Cluster, ClusterOptions};

#[tokio::test]
async fn every_write_is_in_the_audit_log_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let options =
        ClusterOptions { apiserver_args: vec![format!("--audit-log-path={}", path.display())], ..Default::default() };
    let cluster = Cluster::start_with(options).await.expect("start cluster");
    let client = cluster.client();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "audited"}, "data": {"a": "1"}});
    client.create("ConfigMap", "default", &cm).await.unwrap();
    assert!(client.create("ConfigMap", "default", &cm).await.is_err(), "a second create conflicts");
    client.get("ConfigMap", "default", "audited").await.unwrap();
    client.patch("ConfigMap", "default", "audited", &json!({"data": {"a": "2"}})).await.unwrap();
    client.delete("ConfigMap", "default", "audited").await.unwrap();

    let ours = |e: &&Value| e["objectRef"]["name"] == "audited";
    let events: Vec<Value> = eventually("four audit events for configmap audited", || async {
        let text = std::fs::read_to_string(&path).ok()?;
        let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        (events.iter().filter(ours).count() >= 4).then_some(events)
    })
    .await;
    let seen: Vec<(String, u64)> = events
        .iter()
        .filter(ours)
        .map(|e| (e["verb"].as_str().unwrap().to_string(), e["responseStatus"]["code"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [("create".into(), 201), ("create".into(), 409), ("patch".into(), 200), ("delete".into(), 200)],
        "reads are not audited, failures are"
    );
    let first = events.iter().find(ours).unwrap();
    assert_eq!(first["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(first["objectRef"]["resource"], "configmaps");
    assert_eq!(first["objectRef"]["namespace"], "default");
    assert_eq!(first["sourceIPs"][0], "127.0.0.1");
    // The caller its client certificate names: the test cluster's admin.
    assert_eq!(first["user"]["username"], "skiff-admin");
    assert_eq!(first["user"]["groups"], json!(["system:masters", "system:authenticated"]));
    assert!(first["requestReceivedTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{first}");
}
