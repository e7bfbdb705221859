//! Workloads beyond Deployments on real containers (containerd, a real
//! kubelet, the scheduler and the controller-manager): Jobs whose pods run
//! to completion, counted by index, and failed by a podFailurePolicy rule.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use skiff_client::{Client, ListParams};
use skiff_testkit::runtime::BUSYBOX_IMAGE;
use skiff_testkit::{eventually, Cluster};

const NODE: &str = "worker";

async fn cluster() -> Cluster {
    Cluster::start_with_workers(NODE).await.expect("start a cluster with a runtime and a kubelet")
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_ && c["status"] == "True")
}

async fn finished_job(client: &Client, name: &str) -> Value {
    eventually(&format!("job {name} to finish"), || async {
        let job = client.get("Job", "default", name).await.ok()?;
        (condition(&job, "Complete").is_some() || condition(&job, "Failed").is_some()).then_some(job)
    })
    .await
}

async fn pods_of(client: &Client, job: &str) -> Vec<Value> {
    let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    client.list("Pod", "default", &params).await.unwrap().items
}

/// An Indexed Job of 5 completions, 2 at a time: each index succeeds
/// exactly once, each pod sees its index in `JOB_COMPLETION_INDEX` and as
/// its hostname, and `get jobs` reads 5/5.
#[tokio::test]
async fn an_indexed_job_runs_each_index_once_two_at_a_time() {
    let cluster = cluster().await;
    let client = cluster.client();
    let busybox = cluster.runtime().unwrap().registry().image(BUSYBOX_IMAGE);
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "squares"},
        "spec": {"completions": 5, "parallelism": 2, "completionMode": "Indexed",
            "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "work", "image": busybox,
                "command": ["sh", "-c", "echo index=$JOB_COMPLETION_INDEX host=$(hostname) square=$((JOB_COMPLETION_INDEX * JOB_COMPLETION_INDEX))"]}]}}}});
    client.create("Job", "default", &job).await.unwrap();
    let done = finished_job(&client, "squares").await;
    assert!(condition(&done, "Complete").is_some(), "{done}");
    assert_eq!(done["status"]["completedIndexes"], "0-4");
    assert_eq!(done["status"]["succeeded"], 5);

    let pods = pods_of(&client, "squares").await;
    let mut by_index: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for pod in &pods {
        let index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap();
        by_index.entry(index.to_string()).or_default().push(pod);
        assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
    }
    assert_eq!(by_index.keys().collect::<Vec<_>>(), ["0", "1", "2", "3", "4"]);
    assert!(by_index.values().all(|p| p.len() == 1), "one pod per index: {by_index:?}");
    // Never more than two at once: each pod after the first two started
    // only once an earlier one had finished.
    let mut spans: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            let state = &p["status"]["containerStatuses"][0]["state"]["terminated"];
            (state["startedAt"].as_str().unwrap().to_string(), state["finishedAt"].as_str().unwrap().to_string())
        })
        .collect();
    spans.sort();
    for (i, (started, _)) in spans.iter().enumerate() {
        let running = spans[..i].iter().filter(|(_, finished)| finished > started).count();
        assert!(running < 2, "pod {i} started at {started} with {running} others running: {spans:?}");
    }

    for (index, pods) in &by_index {
        let name = pods[0]["metadata"]["name"].as_str().unwrap();
        let out = cluster.skiffctl(&["logs", name], None).unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        let i: i64 = index.parse().unwrap();
        assert_eq!(log.trim(), format!("index={i} host=squares-{i} square={}", i * i), "{name}");
    }
    let out = cluster.skiffctl(&["get", "jobs"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("squares") && table.contains("Complete") && table.contains("5/5"), "{table}");
}

/// A pod exiting 42 matches the podFailurePolicy's FailJob rule: the Job
/// fails at once (no retries), naming the rule; a Job whose only pod fails
/// with backoffLimit 0 fails as BackoffLimitExceeded.
#[tokio::test]
async fn failed_pods_fail_the_job_by_policy_or_backoff_limit() {
    let cluster = cluster().await;
    let client = cluster.client();
    let busybox = cluster.runtime().unwrap().registry().image(BUSYBOX_IMAGE);
    let job = |name: &str, exit: i32, policy: Value| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": if policy.is_null() { 0 } else { 6 }, "podFailurePolicy": policy,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": busybox, "command": ["sh", "-c", format!("exit {exit}")]}]}}}})
    };
    let policy = json!({"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]});
    client.create("Job", "default", &job("fatal", 42, policy)).await.unwrap();
    client.create("Job", "default", &job("flaky", 1, Value::Null)).await.unwrap();

    let fatal = finished_job(&client, "fatal").await;
    let failed = condition(&fatal, "Failed").unwrap_or_else(|| panic!("failed: {fatal}"));
    assert_eq!(failed["reason"], "PodFailurePolicy", "{fatal}");
    let message = failed["message"].as_str().unwrap();
    assert!(message.contains("container main exited with code 42") && message.contains("rule at index 0"), "{message}");
    assert_eq!(fatal["status"]["failed"], 1);
    assert_eq!(pods_of(&client, "fatal").await.len(), 1, "no retry after FailJob");

    let flaky = finished_job(&client, "flaky").await;
    assert_eq!(condition(&flaky, "Failed").map(|c| &c["reason"]), Some(&json!("BackoffLimitExceeded")), "{flaky}");
    assert_eq!(flaky["status"]["failed"], 1);
    let out = cluster.skiffctl(&["get", "jobs"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("flaky") && l.contains("Failed") && l.contains("0/1")), "{table}");
}

async fn running_pod(client: &Client, name: &str, not_uid: Option<&str>) -> Value {
    eventually(&format!("pod {name} running"), || async {
        let pod = client.get("Pod", "default", name).await.ok()?;
        let fresh = not_uid.is_none_or(|uid| pod["metadata"]["uid"] != uid);
        (fresh && pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null()).then_some(pod)
    })
    .await
}

async fn log_of(cluster: &Cluster, pod: &str, want: &str) {
    eventually(&format!("{pod}'s log to read {want:?}"), || async {
        let out = cluster.skiffctl(&["logs", pod], None).ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == want).then_some(())
    })
    .await;
}

/// A StatefulSet's claim on a real node: the default `local-path` class
/// provisions a volume on the node the scheduler chose, the data written
/// there outlives the pod (its replacement reads it back), and deleting
/// the set (claims deleted with it) deletes the volume and its folder.
#[tokio::test]
async fn a_stateful_sets_data_outlives_its_pod() {
    let cluster = cluster().await;
    let client = cluster.client();
    let busybox = cluster.runtime().unwrap().registry().image(BUSYBOX_IMAGE);
    let script = "test -f /data/first || hostname > /data/first; echo boot >> /data/boots; \
                  cat /data/first; wc -l < /data/boots; sleep 3600";
    let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "notes"},
        "spec": {"replicas": 1, "serviceName": "notes", "selector": {"matchLabels": {"app": "notes"}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"},
            "template": {"metadata": {"labels": {"app": "notes"}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": busybox, "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}]}});
    client.create("StatefulSet", "default", &set).await.unwrap();
    let first = running_pod(&client, "notes-0", None).await;
    log_of(&cluster, "notes-0", "notes-0\n1").await;

    let claim = client.get("PersistentVolumeClaim", "default", "data-notes-0").await.unwrap();
    assert_eq!(claim["spec"]["storageClassName"], "local-path", "the default class");
    assert_eq!(claim["status"]["phase"], "Bound", "{claim}");
    assert_eq!(claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], NODE);
    let volume_name = claim["spec"]["volumeName"].as_str().unwrap().to_string();
    let volume = eventually("the volume Bound", || async {
        let volume = client.get("PersistentVolume", "", &volume_name).await.ok()?;
        (volume["status"]["phase"] == "Bound").then_some(volume)
    })
    .await;
    assert_eq!(volume["spec"]["claimRef"]["name"], "data-notes-0");
    assert_eq!(volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0], NODE);
    let folder = std::path::PathBuf::from(volume["spec"]["local"]["path"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(folder.join("first")).unwrap().trim(), "notes-0");

    // The pod goes; its replacement finds the data.
    client.delete("Pod", "default", "notes-0").await.unwrap();
    running_pod(&client, "notes-0", first["metadata"]["uid"].as_str()).await;
    log_of(&cluster, "notes-0", "notes-0\n2").await;

    // The set goes, its claim with it, and the volume and folder with that.
    client.delete("StatefulSet", "default", "notes").await.unwrap();
    eventually("the claim, the volume and its folder gone", || async {
        let claim_gone =
            client.get("PersistentVolumeClaim", "default", "data-notes-0").await.is_err_and(|e| e.is_not_found());
        let volume_gone = client.get("PersistentVolume", "", &volume_name).await.is_err_and(|e| e.is_not_found());
        (claim_gone && volume_gone && !folder.exists()).then_some(())
    })
    .await;
}

/// A Deployment whose pods burn CPU for their first seconds, under an HPA
/// targeting 50% of a 20m request, with the controller's periods shortened
/// by flags: it scales out while they burn, to at most maxReplicas, then
/// back in to minReplicas once the burning stops; the HPA reports its
/// metric, conditions and Events.
#[tokio::test]
async fn a_cpu_burning_deployment_scales_out_then_back_in() {
    let options = skiff_testkit::ClusterOptions {
        runtime: Some(skiff_testkit::runtime::RuntimeOptions::default()),
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(options).await.expect("start the cluster");
    let flags =
        ["--horizontal-pod-autoscaler-sync-period=1s", "--horizontal-pod-autoscaler-downscale-stabilization=3s"];
    cluster.start_workers(NODE, &flags).await.expect("start the workers");
    let client = cluster.client();
    let busybox = cluster.runtime().unwrap().registry().image(BUSYBOX_IMAGE);
    // About ten seconds of one busy core, then nothing.
    let burn = "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; exec sleep 3600";
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burner"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burner"}},
            "template": {"metadata": {"labels": {"app": "burner"}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": busybox, "command": ["sh", "-c", burn],
                    "resources": {"requests": {"cpu": "20m"}}}]}}}});
    client.create("Deployment", "default", &deploy).await.unwrap();
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "burner"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burner"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}]}});
    client.create("HorizontalPodAutoscaler", "default", &hpa).await.unwrap();

    let out = eventually("scaled out under load", || async {
        let hpa = client.get("HorizontalPodAutoscaler", "default", "burner").await.ok()?;
        (hpa["status"]["desiredReplicas"].as_i64()? > 1).then_some(hpa)
    })
    .await;
    let current = &out["status"]["currentMetrics"][0]["resource"];
    assert_eq!(current["name"], "cpu", "{out}");
    assert!(current["current"]["averageUtilization"].as_i64().unwrap() > 50, "{out}");
    assert!(out["status"]["desiredReplicas"].as_i64().unwrap() <= 3, "never past maxReplicas: {out}");
    let deploy = client.get("Deployment", "default", "burner").await.unwrap();
    assert!(deploy["spec"]["replicas"].as_i64().unwrap() > 1, "{deploy}");

    eventually("scaled back in once the burning stopped", || async {
        let deploy = client.get("Deployment", "default", "burner").await.ok()?;
        (deploy["spec"]["replicas"] == 1).then_some(())
    })
    .await;
    let hpa = client.get("HorizontalPodAutoscaler", "default", "burner").await.unwrap();
    let conditions: Vec<(&str, &str)> = hpa["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert!(conditions.contains(&("AbleToScale", "True")) && conditions.contains(&("ScalingActive", "True")), "{hpa}");
    assert!(hpa["status"]["lastScaleTime"].is_string());
    let events = client.list("Event", "default", &ListParams::default()).await.unwrap().items;
    let rescales: Vec<&str> =
        events.iter().filter(|e| e["reason"] == "SuccessfulRescale").filter_map(|e| e["message"].as_str()).collect();
    assert!(rescales.iter().any(|m| m.contains("above target")), "{rescales:?}");
    assert!(rescales.iter().any(|m| m.starts_with("New size: 1;") && m.contains("below target")), "{rescales:?}");
}
