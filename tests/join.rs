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

/// The end of the certificate in `path`, in seconds since the epoch.
fn certificate_end(path: &Path) -> i64 {
    let pem = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    skiff_pki::not_after(&skiff_pki::pem_certificates(&pem).unwrap()[0]).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// With certificates signed for 40 s (`--cluster-signing-duration`), a
/// joined node renews its client and serving certificates before they end
/// and goes on working on the new ones without a restart. The apiserver
/// checks a client certificate's end on every request, so heartbeats after
/// the first certificate ended prove the new one is in use; a pod created
/// then still starts, so the node's pod watch still delivers. Requests whose
/// certificates ended are deleted.
#[tokio::test]
async fn a_joined_node_renews_its_certificates_before_they_end() {
    let mut cluster =
        Cluster::start_with(ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() })
            .await
            .expect("cluster with a container runtime");
    let short = ["--cluster-signing-duration=40s".to_string()];
    cluster.start_service("controller-manager", "skiff-controller-manager", &short).await.expect("controller-manager");
    let dir = tempfile::tempdir().unwrap();
    let token = skiffctl(&cluster, &["token", "create"]).trim().to_string();
    cluster.start_joining_kubelet("renewer", &bootstrap_config(&cluster, dir.path(), &token)).await.expect("joins");
    let admin = cluster.client();
    eventually("node renewer Ready", || async { admin.get("Node", "", "renewer").await.ok().filter(node_ready) }).await;

    let pki = cluster.dir().join("join/renewer/pki");
    let first_client_end = certificate_end(&pki.join("kubelet-client.crt"));
    let first_serving_end = certificate_end(&pki.join("kubelet.crt"));
    assert!(first_client_end <= now() + 40, "signed for at most 40 s");
    let lease_time = |lease: &Value| {
        let at = lease["spec"]["renewTime"].as_str().unwrap_or_default().to_string();
        chrono::DateTime::parse_from_rfc3339(&at).map_or(0, |t| t.timestamp())
    };
    eventually("a heartbeat after the first client certificate ended", || async {
        let lease = admin.get("Lease", "kube-node-lease", "renewer").await.ok()?;
        (lease_time(&lease) > first_client_end + 2).then_some(())
    })
    .await;
    assert!(certificate_end(&pki.join("kubelet-client.crt")) > first_client_end, "a new client certificate");
    assert!(certificate_end(&pki.join("kubelet.crt")) > first_serving_end, "a new serving certificate");
    let requests = admin.list("CertificateSigningRequest", "", &Default::default()).await.unwrap().items;
    let renewals = requests
        .iter()
        .filter(|r| r["spec"]["username"] == "system:node:renewer")
        .filter(|r| r["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet")
        .count();
    assert!(renewals >= 1, "the node asked as itself: {requests:?}");
    // The joining request's certificate has ended: the controller-manager
    // deletes the request (as Kubernetes' csrcleaner does).
    eventually("the joining request cleaned up once its certificate ended", || async {
        let requests = admin.list("CertificateSigningRequest", "", &Default::default()).await.ok()?.items;
        let joining = format!("system:bootstrap:{}", &token[..6]);
        (!requests.iter().any(|r| r["spec"]["username"] == joining.as_str())).then_some(())
    })
    .await;

    let busybox = cluster.runtime().unwrap().registry().image(skiff_testkit::runtime::BUSYBOX_IMAGE);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "after-renewal"},
        "spec": {"nodeName": "renewer", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": busybox, "command": ["sleep", "3600"]}]},
    });
    admin.create("Pod", "default", &pod).await.unwrap();
    eventually("the pod running on the renewed node", || async {
        let pod = admin.get("Pod", "default", "after-renewal").await.ok()?;
        (pod["status"]["phase"] == "Running").then_some(())
    })
    .await;
}

/// A node that was off for longer than its client certificate's life
/// joins again with its bootstrap token when it starts, as Kubernetes'
/// kubelet does: it does not fail on the ended certificate, and its
/// heartbeats go on as the same node.
#[tokio::test]
async fn a_node_back_after_its_certificate_ended_bootstraps_again() {
    let mut cluster =
        Cluster::start_with(ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() })
            .await
            .expect("cluster with a container runtime");
    let short = ["--cluster-signing-duration=15s".to_string()];
    cluster.start_service("controller-manager", "skiff-controller-manager", &short).await.expect("controller-manager");
    let dir = tempfile::tempdir().unwrap();
    let token = skiffctl(&cluster, &["token", "create"]).trim().to_string();
    let bootstrap = bootstrap_config(&cluster, dir.path(), &token);
    cluster.start_joining_kubelet("returner", &bootstrap).await.expect("joins");
    let admin = cluster.client();
    eventually("node returner Ready", || async { admin.get("Node", "", "returner").await.ok().filter(node_ready) })
        .await;

    cluster.stop_service("kubelet-returner");
    let client_cert = cluster.dir().join("join/returner/pki/kubelet-client.crt");
    let first_end = certificate_end(&client_cert);
    eventually("the node's client certificate ended while it was off", || async { (now() > first_end).then_some(()) })
        .await;

    cluster.start_joining_kubelet("returner", &bootstrap).await.expect("starts again on the ended certificate");
    assert!(certificate_end(&client_cert) > now(), "a new client certificate");
    eventually("a heartbeat from the node that came back", || async {
        let lease = admin.get("Lease", "kube-node-lease", "returner").await.ok()?;
        let at = lease["spec"]["renewTime"].as_str()?.to_string();
        let at = chrono::DateTime::parse_from_rfc3339(&at).ok()?.timestamp();
        (at > first_end).then_some(())
    })
    .await;
}
