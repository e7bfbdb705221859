//! skiffctl against a real apiserver: applying manifests written for
//! Kubernetes, listing them, and reporting bad documents one by one.

use std::path::Path;

use skiff_testkit::Cluster;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn apply_sample_app_then_get_it() {
    let cluster = Cluster::start().await.expect("cluster");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-app.yaml");
    let out = cluster.skiffctl(&["apply", "-f", sample.to_str().unwrap()], None).unwrap();
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in ["namespace/demo created", "deployment.apps/web created", "service/web created"] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }

    let out = cluster.skiffctl(&["get", "deploy", "-n", "demo"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.lines().next().unwrap().split_whitespace().eq(["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]),
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");

    let out = cluster.skiffctl(&["get", "deploy", "-n", "demo", "-o", "json"], None).unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("-o json prints JSON");
    assert_eq!(list["kind"], "DeploymentList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    assert_eq!(list["items"][0]["spec"]["replicas"], 2);

    // Applying the same file again changes nothing.
    let out = cluster.skiffctl(&["apply", "-f", sample.to_str().unwrap()], None).unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("deployment.apps/web unchanged"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn apply_reports_each_bad_document_and_applies_the_rest() {
    let cluster = Cluster::start().await.expect("cluster");
    let manifest = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: good-one}
data: {a: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad-replicas}
spec:
  replicas: three
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: Bad_Name}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: lost, namespace: nowhere}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: good-two}
"#;
    let out = cluster.skiffctl(&["apply", "-f", "-"], Some(manifest)).unwrap();
    assert!(!out.status.success(), "exit status is non-zero when a document fails");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("document 2 (Deployment bad-replicas)") && stderr.contains("spec.replicas"), "{stderr}");
    assert!(stderr.contains("document 3") && stderr.contains("Widget"), "{stderr}");
    assert!(stderr.contains("document 4") && stderr.contains("metadata.name"), "{stderr}");
    assert!(stderr.contains("document 5") && stderr.contains("nowhere"), "{stderr}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("configmap/good-one created") && stdout.contains("configmap/good-two created"), "{stdout}");

    let client = cluster.client();
    assert!(client.get("Deployment", "default", "bad-replicas").await.unwrap_err().is_not_found());

    let out = cluster.skiffctl(&["apply", "-f", "-"], Some("kind: ConfigMap\nmetadata: {name: [unclosed\n")).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("document 1"), "{}", text(&out.stderr));

    let out = cluster.skiffctl(&["get", "deploy", "missing"], None).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}
