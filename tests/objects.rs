//! The object API against a real etcd and apiserver: CRUD for every kind,
//! optimistic concurrency, selectors, watches across restarts and expiry,
//! finalizers, and refusal of bad input.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use skiff_api::proto::CreateRequest;
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_testkit::{eventually, Cluster, ClusterOptions};

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

fn rv(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("resourceVersion")
}

fn pod(name: &str, labels: Value, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1"}]}})
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}

/// A minimal valid object of every kind skiff serves.
fn samples() -> Vec<(&'static str, Value)> {
    let template =
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
    let selector = json!({"matchLabels": {"app": "x"}});
    vec![
        ("Namespace", json!({"metadata": {"name": "sample-ns"}})),
        ("Node", json!({"metadata": {"name": "node-1"}, "status": {"capacity": {"cpu": "4"}}})),
        ("Pod", pod("p", json!({"app": "x"}), "")),
        ("Service", json!({"metadata": {"name": "svc"}, "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}})),
        ("Endpoints", json!({"metadata": {"name": "svc"}, "subsets": []})),
        ("ConfigMap", configmap("cm")),
        ("Secret", json!({"metadata": {"name": "s"}, "stringData": {"password": "x"}})),
        ("ServiceAccount", json!({"metadata": {"name": "sa"}})),
        ("Event", json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Test"})),
        (
            "PersistentVolume",
            json!({"metadata": {"name": "pv"}, "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/tmp/pv"}, "accessModes": ["ReadWriteOnce"]}}),
        ),
        (
            "PersistentVolumeClaim",
            json!({"metadata": {"name": "pvc"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        ("StorageClass", json!({"metadata": {"name": "fast"}, "provisioner": "example.com/fast"})),
        ("Deployment", json!({"metadata": {"name": "d"}, "spec": {"selector": selector, "template": template}})),
        ("ReplicaSet", json!({"metadata": {"name": "rs"}, "spec": {"selector": selector, "template": template}})),
        ("DaemonSet", json!({"metadata": {"name": "ds"}, "spec": {"selector": selector, "template": template}})),
        (
            "StatefulSet",
            json!({"metadata": {"name": "ss"}, "spec": {"selector": selector, "template": template, "serviceName": "svc"}}),
        ),
        (
            "Job",
            json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}], "restartPolicy": "Never"}}}}),
        ),
        (
            "CronJob",
            json!({"metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}], "restartPolicy": "OnFailure"}}}}}}),
        ),
        (
            "Ingress",
            json!({"metadata": {"name": "ing"}, "spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}}),
        ),
        ("Lease", json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})),
        (
            "HorizontalPodAutoscaler",
            json!({"metadata": {"name": "h"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}, "minReplicas": 1, "maxReplicas": 5}}),
        ),
    ]
}

#[tokio::test]
async fn crud_for_every_kind() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    for (kind, obj) in samples() {
        let info = skiff_api::KindInfo::by_kind(kind).unwrap();
        let ns = if info.namespaced { "default" } else { "" };
        let created = client.create(kind, ns, &obj).await.unwrap_or_else(|e| panic!("create {kind}: {e}"));
        let name = name_of(&created).to_string();
        assert_eq!(created["kind"], kind);
        assert_eq!(created["apiVersion"], info.api_version);
        assert!(!created["metadata"]["uid"].as_str().unwrap_or_default().is_empty(), "{kind} has a uid");
        assert!(created["metadata"]["creationTimestamp"].is_string(), "{kind} has a creationTimestamp");

        let got = client.get(kind, ns, &name).await.unwrap_or_else(|e| panic!("get {kind}: {e}"));
        assert_eq!(rv(&got), rv(&created), "{kind}");

        let listed = client.list(kind, ns, &ListParams::default()).await.unwrap();
        assert!(listed.items.iter().any(|o| name_of(o) == name), "{kind} listed");

        let mut changed = got.clone();
        changed["metadata"]["labels"] = json!({"touched": "yes"});
        let updated = client.update(kind, ns, &changed).await.unwrap_or_else(|e| panic!("update {kind}: {e}"));
        assert_eq!(updated["metadata"]["labels"]["touched"], "yes");
        assert!(rv(&updated) > rv(&created), "{kind} update moves resourceVersion");

        client.delete(kind, ns, &name).await.unwrap_or_else(|e| panic!("delete {kind}: {e}"));
        let gone = client.get(kind, ns, &name).await.unwrap_err();
        assert!(gone.is_not_found(), "{kind} after delete: {gone}");
    }
}

#[tokio::test]
async fn defaults_generation_and_status() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let (_, deploy) = samples().into_iter().find(|(k, _)| *k == "Deployment").unwrap();
    let d = client.create("Deployment", "default", &deploy).await.unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    assert_eq!(d["metadata"]["generation"], 1);

    // A label change is not a spec change.
    let mut labelled = d.clone();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let labelled = client.update("Deployment", "default", &labelled).await.unwrap();
    assert_eq!(labelled["metadata"]["generation"], 1);

    // Status written through Update is ignored; through UpdateStatus it lands
    // without touching spec or generation.
    let mut with_status = labelled.clone();
    with_status["status"] = json!({"replicas": 7});
    with_status["spec"]["replicas"] = json!(3);
    let scaled = client.update("Deployment", "default", &with_status).await.unwrap();
    assert_eq!(scaled["metadata"]["generation"], 2);
    assert!(scaled["status"].get("replicas").is_none(), "status ignored by Update: {}", scaled["status"]);
    let mut status_only = scaled.clone();
    status_only["status"] = json!({"replicas": 3, "readyReplicas": 3});
    status_only["spec"]["replicas"] = json!(9);
    let reported = client.update_status("Deployment", "default", &status_only).await.unwrap();
    assert_eq!(reported["status"]["readyReplicas"], 3);
    assert_eq!(reported["spec"]["replicas"], 3, "spec ignored by UpdateStatus");
    assert_eq!(reported["metadata"]["generation"], 2);

    // An update that changes nothing writes nothing.
    let again = client.update("Deployment", "default", &reported).await.unwrap();
    assert_eq!(rv(&again), rv(&reported));

    // A merge patch changes only what it names.
    let patched = client.patch("Deployment", "default", "d", &json!({"spec": {"replicas": 5}})).await.unwrap();
    assert_eq!(patched["spec"]["replicas"], 5);
    assert_eq!(patched["metadata"]["labels"]["team"], "a");
    assert_eq!(patched["status"]["readyReplicas"], 3);
    assert_eq!(patched["metadata"]["generation"], 3);

    // generateName picks a unique name.
    let generated = client
        .create("ConfigMap", "default", &json!({"metadata": {"generateName": "cfg-"}, "data": {}}))
        .await
        .unwrap();
    assert!(name_of(&generated).starts_with("cfg-") && name_of(&generated).len() == 9, "{}", name_of(&generated));
}

#[tokio::test]
async fn stale_resource_version_conflicts() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let first = client.create("ConfigMap", "default", &configmap("shared")).await.unwrap();
    let mut a = first.clone();
    a["data"]["k"] = json!("from-a");
    client.update("ConfigMap", "default", &a).await.unwrap();
    let mut b = first.clone();
    b["data"]["k"] = json!("from-b");
    let err = client.update("ConfigMap", "default", &b).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(err.to_string().contains("configmaps \"shared\""), "message names the object: {err}");
    let stored = client.get("ConfigMap", "default", "shared").await.unwrap();
    assert_eq!(stored["data"]["k"], "from-a", "the stale write changed nothing");

    // A patch pinned to a stale version fails the same way.
    let err = client
        .patch(
            "ConfigMap",
            "default",
            "shared",
            &json!({"metadata": {"resourceVersion": rv(&first).to_string()}, "data": {"k": "c"}}),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    // Creating what exists is refused.
    let err = client.create("ConfigMap", "default", &configmap("shared")).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
}

#[tokio::test]
async fn label_and_field_selectors() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    client.create("Namespace", "", &json!({"metadata": {"name": "other"}})).await.unwrap();
    client.create("Pod", "default", &pod("web-1", json!({"app": "web", "tier": "fe"}), "n1")).await.unwrap();
    client.create("Pod", "default", &pod("web-2", json!({"app": "web", "tier": "be"}), "n2")).await.unwrap();
    client.create("Pod", "default", &pod("db-1", json!({"app": "db"}), "n1")).await.unwrap();
    client.create("Pod", "other", &pod("web-3", json!({"app": "web"}), "n1")).await.unwrap();

    let names = |items: Vec<Value>| {
        let mut n: Vec<String> = items.iter().map(|o| name_of(o).to_string()).collect();
        n.sort();
        n
    };
    let list = |ns: &'static str, p: ListParams| {
        let client = client.clone();
        async move { names(client.list("Pod", ns, &p).await.unwrap().items) }
    };
    assert_eq!(list("default", ListParams::default().labels("app=web")).await, ["web-1", "web-2"]);
    assert_eq!(list("", ListParams::default().labels("app=web")).await, ["web-1", "web-2", "web-3"]);
    assert_eq!(list("default", ListParams::default().labels("tier in (fe),app")).await, ["web-1"]);
    assert_eq!(list("default", ListParams::default().labels("!tier")).await, ["db-1"]);
    assert_eq!(list("", ListParams::default().fields("spec.nodeName=n1")).await, ["db-1", "web-1", "web-3"]);
    assert_eq!(list("default", ListParams::default().fields("spec.nodeName=n1").labels("app=web")).await, ["web-1"]);
    assert_eq!(list("", ListParams::default().fields("metadata.namespace=other")).await, ["web-3"]);
    assert_eq!(list("", ListParams::default().fields("metadata.name=web-2")).await, ["web-2"]);
    assert_eq!(list("default", ListParams::default().fields("status.phase=Pending")).await.len(), 3);

    let err = client.list("Pod", "", &ListParams::default().fields("spec.bogus=1")).await.unwrap_err();
    assert!(err.is_invalid() && err.to_string().contains("spec.bogus"), "{err}");
    let err = client.list("Pod", "", &ListParams::default().labels("app in web")).await.unwrap_err();
    assert!(err.is_invalid(), "{err}");

    // A watch with a selector sees an object leave and enter its view.
    let start = client.list("Pod", "default", &ListParams::default()).await.unwrap().resource_version;
    let mut w =
        Box::pin(client.watch("Pod", "default", &ListParams::default().labels("app=web"), &start).await.unwrap());
    client.patch("Pod", "default", "db-1", &json!({"metadata": {"labels": {"app": "web"}}})).await.unwrap();
    client.patch("Pod", "default", "web-1", &json!({"metadata": {"labels": {"app": "old"}}})).await.unwrap();
    client.patch("Pod", "default", "web-3-not-here", &json!({})).await.unwrap_err();
    let ev1 = next_change(&mut w).await;
    let ev2 = next_change(&mut w).await;
    assert!(matches!(&ev1, WatchEvent::Added(o) if name_of(o) == "db-1"), "{ev1:?}");
    assert!(matches!(&ev2, WatchEvent::Deleted(o) if name_of(o) == "web-1"), "{ev2:?}");
}

/// Waits until the apiserver's ConfigMap watch cache holds `revision`, so
/// that compacting etcd can't leave it behind. A LIST waits for the cache to
/// catch up with this apiserver's last write of the kind (for 3 s at most,
/// hence the retry) and answers with the cache's revision.
async fn cache_reaches(client: &Client, revision: i64) {
    eventually("the watch cache to apply the last write", || async {
        let list = client.list("ConfigMap", "default", &ListParams::default()).await.ok()?;
        (list.resource_version.parse::<i64>().ok()? >= revision).then_some(())
    })
    .await;
}

async fn next_change<S>(w: &mut S) -> WatchEvent<Value>
where
    S: futures::Stream<Item = skiff_client::Result<WatchEvent<Value>>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a watch event within 10s")
            .expect("the watch stays open")
            .expect("no watch error");
        if !matches!(ev, WatchEvent::Bookmark(_)) {
            return ev;
        }
    }
}

/// Collects the names of the next `n` changes.
async fn take_names<S>(w: &mut S, n: usize) -> Vec<String>
where
    S: futures::Stream<Item = skiff_client::Result<WatchEvent<Value>>> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < n {
        let ev = next_change(w).await;
        out.push(name_of(ev.object().unwrap()).to_string());
    }
    out
}

#[tokio::test]
async fn watch_resumes_across_apiserver_restart_without_gaps_or_repeats() {
    // A small history ring, so that resuming after the restart reaches back
    // past what the new cache holds and must be served from etcd.
    let options = ClusterOptions { apiserver_args: vec!["--watch-cache-events=4".into()], ..Default::default() };
    let mut cluster = Cluster::start_with(options).await.expect("cluster");
    let client = cluster.client();
    let start = client.list("ConfigMap", "default", &ListParams::default()).await.unwrap().resource_version;
    let mut w = Box::pin(client.watch("ConfigMap", "default", &ListParams::default(), &start).await.unwrap());
    for i in 0..3 {
        client.create("ConfigMap", "default", &configmap(&format!("before-{i}"))).await.unwrap();
    }
    let seen = take_names(&mut w, 3).await;
    assert_eq!(seen, ["before-0", "before-1", "before-2"]);
    let resume_from = rv(&client.get("ConfigMap", "default", "before-2").await.unwrap());
    drop(w);

    cluster.restart_apiserver().await.expect("restart");
    for i in 0..10 {
        client.create("ConfigMap", "default", &configmap(&format!("after-{i}"))).await.unwrap();
    }
    // From the cache's history ring is too short for this: etcd serves it.
    let mut w =
        Box::pin(client.watch("ConfigMap", "default", &ListParams::default(), &resume_from.to_string()).await.unwrap());
    let resumed = take_names(&mut w, 10).await;
    let expected: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    assert_eq!(resumed, expected, "every event after the resume point, once, in order");
    // And from the cache: the last three.
    let third_last = rv(&client.get("ConfigMap", "default", "after-6").await.unwrap());
    let mut w =
        Box::pin(client.watch("ConfigMap", "default", &ListParams::default(), &third_last.to_string()).await.unwrap());
    assert_eq!(take_names(&mut w, 3).await, ["after-7", "after-8", "after-9"]);
    client.create("ConfigMap", "default", &configmap("live")).await.unwrap();
    assert_eq!(take_names(&mut w, 1).await, ["live"]);
}

#[tokio::test]
async fn compacted_history_expires_and_a_relist_recovers() {
    let options = ClusterOptions { apiserver_args: vec!["--watch-cache-events=2".into()], ..Default::default() };
    let cluster = Cluster::start_with(options).await.expect("cluster");
    let client = cluster.client();
    let old = client.create("ConfigMap", "default", &configmap("old")).await.unwrap();
    for i in 0..5 {
        client.create("ConfigMap", "default", &configmap(&format!("n-{i}"))).await.unwrap();
    }
    let latest = rv(&client.get("ConfigMap", "default", "n-4").await.unwrap());
    // Else the watch below could still be served from the cache's history.
    cache_reaches(&client, latest).await;
    let mut etcd = cluster.etcd_client().await.unwrap();
    etcd.compact(latest, None).await.unwrap();

    let mut w =
        Box::pin(client.watch("ConfigMap", "default", &ListParams::default(), &rv(&old).to_string()).await.unwrap());
    let first = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("an answer").expect("an item");
    let err = first.expect_err("watching compacted history fails");
    assert!(err.is_expired(), "{err}");

    let relisted = client.list("ConfigMap", "default", &ListParams::default()).await.unwrap();
    assert_eq!(relisted.items.len(), 6);
    let mut w = Box::pin(
        client.watch("ConfigMap", "default", &ListParams::default(), &relisted.resource_version).await.unwrap(),
    );
    client.delete("ConfigMap", "default", "old").await.unwrap();
    assert!(matches!(next_change(&mut w).await, WatchEvent::Deleted(o) if name_of(&o) == "old"));
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let mut cm = configmap("held");
    cm["metadata"]["finalizers"] = json!(["example.com/hold"]);
    client.create("ConfigMap", "default", &cm).await.unwrap();
    let start = client.list("ConfigMap", "default", &ListParams::default()).await.unwrap().resource_version;
    let mut w = Box::pin(client.watch("ConfigMap", "default", &ListParams::default(), &start).await.unwrap());

    let marked = client.delete("ConfigMap", "default", "held").await.unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    let still = client.get("ConfigMap", "default", "held").await.expect("still there while finalizers remain");
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    assert!(matches!(next_change(&mut w).await, WatchEvent::Modified(_)));

    let released =
        client.patch("ConfigMap", "default", "held", &json!({"metadata": {"finalizers": null}})).await.unwrap();
    assert_eq!(name_of(&released), "held");
    assert!(client.get("ConfigMap", "default", "held").await.unwrap_err().is_not_found());
    assert!(matches!(next_change(&mut w).await, WatchEvent::Deleted(o) if name_of(&o) == "held"));

    let err = client.delete("Namespace", "", "default").await.unwrap_err();
    assert!(err.to_string().contains("system namespace"), "{err}");
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_stored() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let count = |client: Client| async move {
        client.list("Deployment", "", &ListParams::default()).await.unwrap().items.len()
    };
    let (_, deploy) = samples().into_iter().find(|(k, _)| *k == "Deployment").unwrap();

    let mut wrong_type = deploy.clone();
    wrong_type["spec"]["replicas"] = json!("three");
    let err = client.create("Deployment", "default", &wrong_type).await.unwrap_err();
    assert!(err.is_invalid() && err.to_string().contains("spec.replicas: invalid type: string \"three\""), "{err}");

    let mut bad_name = deploy.clone();
    bad_name["metadata"]["name"] = json!("Bad_Name");
    let err = client.create("Deployment", "default", &bad_name).await.unwrap_err();
    assert!(err.to_string().contains("metadata.name"), "{err}");

    let mut unknown_field = deploy.clone();
    unknown_field["spec"]["replica"] = json!(2);
    let err = client.create("Deployment", "default", &unknown_field).await.unwrap_err();
    assert!(err.to_string().contains("spec.replica: unknown field"), "{err}");

    let mut mismatched = deploy.clone();
    mismatched["spec"]["selector"] = json!({"matchLabels": {"app": "y"}});
    let err = client.create("Deployment", "default", &mismatched).await.unwrap_err();
    assert!(err.to_string().contains("selector"), "{err}");

    let err = client.create("Deployment", "missing-ns", &deploy).await.unwrap_err();
    assert!(err.is_not_found() && err.to_string().contains("namespace \"missing-ns\" not found"), "{err}");

    let mut wrong_version = deploy.clone();
    wrong_version["apiVersion"] = json!("apps/v1beta1");
    let err = client.create("Deployment", "default", &wrong_version).await.unwrap_err();
    assert!(err.to_string().contains("apps/v1beta1"), "{err}");

    let err = client.create("Widget", "default", &json!({"metadata": {"name": "w"}})).await.unwrap_err();
    assert!(err.is_invalid() && err.to_string().contains("unknown kind \"Widget\""), "{err}");

    assert_eq!(count(client.clone()).await, 0, "no bad Deployment was stored");

    let big = json!({"metadata": {"name": "big"}, "data": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let err = client.create("ConfigMap", "default", &big).await.unwrap_err();
    assert!(err.is_invalid() && err.to_string().contains("limit of 1572864 bytes"), "{err}");
    assert!(client.get("ConfigMap", "default", "big").await.unwrap_err().is_not_found());

    // Bytes that are not JSON at all, through the raw gRPC API.
    let mut raw = cluster.client().objects();
    for body in [&b"{not json"[..], b"[1,2]", b"\"str\"", &[0xff, 0xfe, 0x00]] {
        let status = raw
            .create(CreateRequest {
                kind: "ConfigMap".into(),
                namespace: "default".into(),
                object: body.to_vec().into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{body:?}: {status:?}");
    }
    // The apiserver is still serving after all of it.
    client.create("ConfigMap", "default", &configmap("fine")).await.unwrap();
}

/// Jobs, CronJobs and claims: the apiserver makes a Job's selector from its
/// uid, refuses what Kubernetes refuses (naming the field), keeps a Job's
/// selector and template as they were made, and gives a claim the default
/// StorageClass.
#[tokio::test]
async fn jobs_get_their_selector_and_bad_jobs_cron_jobs_and_claims_are_refused() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let (_, job) = samples().into_iter().find(|(k, _)| *k == "Job").unwrap();
    let (_, cron) = samples().into_iter().find(|(k, _)| *k == "CronJob").unwrap();

    let created = client.create("Job", "default", &job).await.unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap();
    assert_eq!(created["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    let labels = &created["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        (labels["batch.kubernetes.io/job-name"].as_str(), labels["controller-uid"].as_str()),
        (Some("j"), Some(uid))
    );
    assert_eq!(created["spec"]["completions"], 1, "defaulted with parallelism");

    let mut changed = created.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
    let err = client.update("Job", "default", &changed).await.unwrap_err();
    assert!(err.is_invalid() && err.to_string().contains("spec.template: field is immutable"), "{err}");
    let mut resumed = created.clone();
    resumed["spec"]["suspend"] = json!(true);
    client.update("Job", "default", &resumed).await.expect("suspend may change");

    let refused = |patch: Value, field: &'static str, why: &'static str| (patch, field, why);
    let bad_jobs = [
        refused(
            json!({"spec": {"completionMode": "Indexed", "parallelism": 3}}),
            "spec.completions",
            "required when completionMode is Indexed",
        ),
        refused(json!({"spec": {"completionMode": "Sideways"}}), "spec.completionMode", "unsupported value"),
        refused(json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}}), "spec.selector", "auto-generated"),
        refused(json!({"spec": {"activeDeadlineSeconds": 0}}), "spec.activeDeadlineSeconds", "greater than 0"),
        refused(
            json!({"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}),
            "spec.template.spec.restartPolicy",
            "not allowed",
        ),
        refused(
            json!({"spec": {"podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0]}}]}}}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
            "0 is not allowed",
        ),
    ];
    for (i, (patch, field, why)) in bad_jobs.into_iter().enumerate() {
        let mut bad = job.clone();
        bad["metadata"]["name"] = json!(format!("bad-{i}"));
        json_patch::merge(&mut bad, &patch);
        let err = client.create("Job", "default", &bad).await.unwrap_err();
        assert!(err.is_invalid() && err.to_string().contains(field) && err.to_string().contains(why), "{field}: {err}");
    }
    let bad_crons = [
        refused(
            json!({"spec": {"schedule": "61 * * * *"}}),
            "spec.schedule",
            "minute field \"61\": 61 is out of range 0-59",
        ),
        refused(json!({"spec": {"schedule": "* * *"}}), "spec.schedule", "has 3 fields"),
        refused(json!({"spec": {"timeZone": "Mars/Olympus"}}), "spec.timeZone", "unknown time zone"),
        refused(json!({"spec": {"concurrencyPolicy": "Sometimes"}}), "spec.concurrencyPolicy", "unsupported value"),
    ];
    for (i, (patch, field, why)) in bad_crons.into_iter().enumerate() {
        let mut bad = cron.clone();
        bad["metadata"]["name"] = json!(format!("bad-{i}"));
        json_patch::merge(&mut bad, &patch);
        let err = client.create("CronJob", "default", &bad).await.unwrap_err();
        assert!(err.is_invalid() && err.to_string().contains(field) && err.to_string().contains(why), "{field}: {err}");
    }
    // A StatefulSet needs the Service its pods are named under.
    let (_, mut set) = samples().into_iter().find(|(k, _)| *k == "StatefulSet").unwrap();
    set["spec"].as_object_mut().unwrap().remove("serviceName");
    let err = client.create("StatefulSet", "default", &set).await.unwrap_err();
    assert!(err.is_invalid() && err.to_string().contains("spec.serviceName: required"), "{err}");

    // Claims: the default class filled in, an unknown one refused.
    let claim = |name: &str, class: Option<&str>| {
        let mut claim = json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}});
        if let Some(class) = class {
            claim["spec"]["storageClassName"] = json!(class);
        }
        claim
    };
    let defaulted = client.create("PersistentVolumeClaim", "default", &claim("plain", None)).await.unwrap();
    assert_eq!(defaulted["spec"]["storageClassName"], "local-path");
    let err = client.create("PersistentVolumeClaim", "default", &claim("lost", Some("nope"))).await.unwrap_err();
    assert!(
        err.is_invalid() && err.to_string().contains("spec.storageClassName: storage class \"nope\" not found"),
        "{err}"
    );
    let mut no_size = claim("sizeless", None);
    no_size["spec"]["resources"] = json!({});
    let err = client.create("PersistentVolumeClaim", "default", &no_size).await.unwrap_err();
    assert!(err.to_string().contains("spec.resources.requests.storage: required"), "{err}");

    let mut zoned = cron.clone();
    zoned["spec"]["timeZone"] = json!("Europe/Berlin");
    client.create("CronJob", "default", &zoned).await.expect("a known time zone");
    let jobs = client.list("Job", "default", &ListParams::default()).await.unwrap().items;
    assert_eq!(jobs.len(), 1, "no bad Job was stored");
}

#[tokio::test]
async fn lists_come_in_pages_of_one_snapshot() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    for i in 0..25 {
        client.create("ConfigMap", "default", &configmap(&format!("page-{i:02}"))).await.unwrap();
    }
    let all = client.list("ConfigMap", "default", &ListParams { page_size: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all.items.len(), 25, "every item across pages");

    let mut raw = cluster.client().objects();
    let page = |token: String| skiff_api::proto::ListRequest {
        kind: "ConfigMap".into(),
        namespace: "default".into(),
        limit: 10,
        continue_token: token,
        ..Default::default()
    };
    let first = raw.list(page(String::new())).await.unwrap().into_inner();
    assert_eq!(first.items.len(), 10);
    assert!(!first.continue_token.is_empty());
    // Writes between pages don't show: the rest comes from the first page's
    // snapshot (from etcd, since the cache has moved on).
    client.create("ConfigMap", "default", &configmap("page-00a")).await.unwrap();
    client.delete("ConfigMap", "default", "page-24").await.unwrap();
    let mut names: Vec<String> =
        first.items.iter().map(|b| name_of(&serde_json::from_slice(b).unwrap()).to_string()).collect();
    let mut token = first.continue_token;
    while !token.is_empty() {
        let next = raw.list(page(token)).await.unwrap().into_inner();
        assert_eq!(next.resource_version, first.resource_version, "same snapshot on every page");
        names.extend(next.items.iter().map(|b| name_of(&serde_json::from_slice(b).unwrap()).to_string()));
        token = next.continue_token;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    assert_eq!(names, expected);

    // Once etcd compacts the snapshot, its continuation expires.
    let second = raw.list(page(String::new())).await.unwrap().into_inner();
    client.create("ConfigMap", "default", &configmap("after")).await.unwrap();
    let latest = rv(&client.get("ConfigMap", "default", "after").await.unwrap());
    // Else the cache could still show the second page's revision and serve it.
    cache_reaches(&client, latest).await;
    let mut etcd = cluster.etcd_client().await.unwrap();
    etcd.compact(latest, None).await.unwrap();
    let err = raw.list(page(second.continue_token)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let err = raw.list(page("garbage".into())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}
