//! A node joins with a bootstrap token, as with `kubeadm join` or k3s'
//! agent token: `skiffctl token create` prints a token; a kubelet holding
//! only that token (and the cluster CA) asks for its client certificate
//! through a CertificateSigningRequest, the controller-manager approves and
//! signs it with the cluster CA, and the kubelet registers as
//! `system:node:NAME`, with a serving certificate obtained the same way.
//! A wrong, expired or deleted token gets nothing and registers nothing.

use std::path::Path;

use serde_json::Value;
use skiff_client::ClientConfig;
use skiff_testkit::runtime::RuntimeOptions;
use skiff_testkit::{eventually, Cluster, ClusterOptions};

async fn cluster() -> Cluster {
    let mut cluster =
        Cluster::start_with(ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() })
            .await
            .expect("cluster with a container runtime");
    // The testkit gives it the cluster CA to sign with.
    cluster.start_service("controller-manager", "skiff-controller-manager", &[]).await.expect("controller-manager");
    cluster
}

fn skiffctl(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.skiffctl(args, None).expect("skiffctl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "skiffctl {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// A client config holding only `token` and the cluster CA.
fn bootstrap_config(cluster: &Cluster, dir: &Path, token: &str) -> std::path::PathBuf {
    let config = ClientConfig {
        server: cluster.server(),
        certificate_authority: Some(cluster.pki().unwrap().ca_file()),
        token: Some(token.to_string()),
        ..ClientConfig::default()
    };
    let path = dir.join(format!("bootstrap-{}.yaml", &token[..6]));
    config.save_to(&path).unwrap();
    path
}

fn node_ready(node: &Value) -> bool {
    let conditions = node["status"]["conditions"].as_array();
    conditions.is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test]
async fn a_node_joins_with_a_bootstrap_token_and_a_bad_token_gets_nothing() {
    let mut cluster = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let token =
        skiffctl(&cluster, &["token", "create", "--ttl", "1h", "--description", "join test"]).trim().to_string();
    assert!(skiffctl(&cluster, &["token", "list"]).contains("join test"));

    cluster
        .start_joining_kubelet("joiner", &bootstrap_config(&cluster, dir.path(), &token))
        .await
        .expect("the node joins");
    let admin = cluster.client();
    let node =
        eventually("node joiner Ready", || async { admin.get("Node", "", "joiner").await.ok().filter(node_ready) })
            .await;
    assert_eq!(node["metadata"]["name"], "joiner");

    // Both of its certificates came through requests the controller-manager
    // approved and signed: asked by the token, then by the node itself.
    let requests = admin.list("CertificateSigningRequest", "", &Default::default()).await.unwrap().items;
    let by = |signer: &str| requests.iter().find(|r| r["spec"]["signerName"] == signer).cloned();
    let client = by("kubernetes.io/kube-apiserver-client-kubelet").expect("a client certificate request");
    assert_eq!(client["spec"]["username"], format!("system:bootstrap:{}", &token[..6]));
    assert!(client["status"]["certificate"].is_string(), "{client}");
    let serving = by("kubernetes.io/kubelet-serving").expect("a serving certificate request");
    assert_eq!(serving["spec"]["username"], "system:node:joiner");
    assert!(serving["status"]["certificate"].is_string(), "{serving}");
    let table = skiffctl(&cluster, &["get", "csr"]);
    assert_eq!(table.matches("Approved,Issued").count(), 2, "{table}");

    // The bootstrap token itself may do nothing else.
    let token_client = skiff_client::Client::connect(&ClientConfig {
        server: cluster.server(),
        certificate_authority: Some(cluster.pki().unwrap().ca_file()),
        token: Some(token.clone()),
        ..ClientConfig::default()
    })
    .unwrap();
    let refused = token_client.list("Secret", "kube-system", &Default::default()).await.unwrap_err();
    assert_eq!(refused.code(), Some(tonic::Code::PermissionDenied), "{refused}");

    // A wrong secret, and a deleted token, get no certificate and no Node.
    let wrong = format!("{}.{}", &token[..6], "0000000000000000");
    let failed = cluster.start_joining_kubelet("intruder", &bootstrap_config(&cluster, dir.path(), &wrong)).await;
    assert!(failed.is_err(), "a wrong token must not join");
    let log = std::fs::read_to_string(cluster.dir().join("logs/kubelet-intruder.log")).unwrap_or_default();
    assert!(log.contains("invalid bootstrap token: wrong secret"), "the kubelet says why: {log}");
    skiffctl(&cluster, &["token", "delete", &token]);
    eventually("the deleted token to stop working", || async {
        token_client.list("CertificateSigningRequest", "", &Default::default()).await.err()
    })
    .await;
    let revoked = cluster.start_joining_kubelet("late", &bootstrap_config(&cluster, dir.path(), &token)).await;
    assert!(revoked.is_err(), "a deleted token must not join");
    for name in ["intruder", "late"] {
        assert!(admin.get("Node", "", name).await.unwrap_err().is_not_found(), "{name} registered");
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let cluster = cluster().await;
    let token = skiffctl(&cluster, &["token", "create", "--ttl", "1s"]).trim().to_string();
    let client = skiff_client::Client::connect(&ClientConfig {
        server: cluster.server(),
        certificate_authority: Some(cluster.pki().unwrap().ca_file()),
        token: Some(token),
        ..ClientConfig::default()
    })
    .unwrap();
    let refused = eventually("the token to expire", || async {
        client.list("CertificateSigningRequest", "", &Default::default()).await.err()
    })
    .await;
    assert_eq!(refused.code(), Some(tonic::Code::Unauthenticated), "{refused}");
    assert!(refused.to_string().contains("expired"), "{refused}");
}
