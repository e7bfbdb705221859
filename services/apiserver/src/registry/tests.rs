//! The registry's verbs against the in-memory store, with the watch caches
//! running on it as they run on etcd.

use serde_json::json;
use tokio::sync::watch as signal;

use super::*;
use crate::allocator::Ranges;
use crate::storage::fake::FakeStorage;

struct World {
    registry: Registry,
    store: FakeStorage,
    /// Stops the caches' loops when the test ends.
    _stop: signal::Sender<bool>,
}

async fn world() -> World {
    let store = FakeStorage::default();
    let storage: Arc<dyn Storage> = Arc::new(store.clone());
    let (stop, stopped) = signal::channel(false);
    let mut caches = HashMap::new();
    for info in skiff_api::KINDS {
        let cache = WatchCache::new(info, 1000);
        let (ready, mut synced) = signal::channel(false);
        tokio::spawn(cache.clone().run(storage.clone(), ready, stopped.clone()));
        synced.wait_for(|r| *r).await.unwrap();
        caches.insert(info.kind, cache);
    }
    let ranges = Ranges { cluster_ips: "10.43.0.0/16".parse().unwrap(), node_ports: "30000-32767".parse().unwrap() };
    let registry = Registry::new(storage, caches, ranges);
    registry.ensure_system_namespaces().await.unwrap();
    World { registry, store, _stop: stop }
}

fn value(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

impl World {
    async fn create(&self, kind: &str, v: Value) -> Value {
        value(&self.registry.create(kind, "default", &body(&v), None, false).await.unwrap())
    }

    async fn get(&self, kind: &str, name: &str) -> Result<Value, Error> {
        let ns = if kind == "Node" { "" } else { "default" };
        self.registry.get(kind, ns, name).await.map(|b| value(&b))
    }

    async fn update(&self, kind: &str, v: &Value) -> Result<Value, Error> {
        self.registry.update(kind, "default", &body(v), false, false).await.map(|b| value(&b))
    }

    async fn delete(&self, kind: &str, name: &str, grace: Option<i64>) -> Result<Value, Error> {
        self.registry
            .delete(kind, "default", name, &DeleteOptions { grace, ..Default::default() })
            .await
            .map(|b| value(&b))
    }
}

fn config_map(name: &str, finalizers: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "finalizers": finalizers}, "data": {"k": "v"}})
}

fn deletion_timestamp(v: &Value) -> &str {
    meta::str_field(v, "deletionTimestamp")
}

#[tokio::test]
async fn a_finalized_object_is_only_marked_and_goes_with_its_last_finalizer() {
    let w = world().await;
    w.create("ConfigMap", config_map("held", &["example.com/keep"])).await;

    let marked = w.delete("ConfigMap", "held", None).await.unwrap();
    assert!(!deletion_timestamp(&marked).is_empty(), "{marked}");
    let mut stored = w.get("ConfigMap", "held").await.unwrap();
    assert_eq!(deletion_timestamp(&stored), deletion_timestamp(&marked));
    let again = w.delete("ConfigMap", "held", None).await.unwrap();
    assert_eq!(deletion_timestamp(&again), deletion_timestamp(&marked), "a second delete changes nothing");

    stored["metadata"]["finalizers"] = json!([]);
    w.update("ConfigMap", &stored).await.unwrap();
    assert!(matches!(w.get("ConfigMap", "held").await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn an_object_without_finalizers_is_deleted_at_once() {
    let w = world().await;
    w.create("ConfigMap", config_map("free", &[])).await;
    w.delete("ConfigMap", "free", None).await.unwrap();
    assert!(matches!(w.get("ConfigMap", "free").await, Err(Error::NotFound { .. })));
}

fn node(name: &str, ready: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"conditions": [{"type": "Ready", "status": ready}]}})
}

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node, "terminationGracePeriodSeconds": 7,
                    "containers": [{"name": "c", "image": "busybox"}]}})
}

#[tokio::test]
async fn a_pod_on_a_ready_node_waits_for_its_kubelet_to_delete_it_for_good() {
    let w = world().await;
    w.registry.create("Node", "", &body(&node("n1", "True")), None, false).await.unwrap();
    w.create("Pod", pod("web", "n1")).await;

    let marked = w.delete("Pod", "web", None).await.unwrap();
    assert!(!deletion_timestamp(&marked).is_empty());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 7, "the pod's own grace period");
    assert!(w.get("Pod", "web").await.is_ok(), "the kubelet has yet to stop the containers");

    w.delete("Pod", "web", Some(0)).await.unwrap();
    assert!(matches!(w.get("Pod", "web").await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn a_huge_grace_period_is_bounded_not_a_panic() {
    let w = world().await;
    w.registry.create("Node", "", &body(&node("n1", "True")), None, false).await.unwrap();
    let mut own = pod("own", "n1");
    own["spec"]["terminationGracePeriodSeconds"] = json!(i64::MAX);
    w.create("Pod", own).await;
    w.create("Pod", pod("asked", "n1")).await;

    for (name, grace) in [("own", None), ("asked", Some(i64::MAX))] {
        let marked = w.delete("Pod", name, grace).await.unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(deletion_timestamp(&marked)).expect("an RFC 3339 time");
        assert!(at > chrono::Utc::now() + chrono::Duration::days(365), "{name}: {at} is far ahead, not wrapped");
        assert!(marked["metadata"]["deletionGracePeriodSeconds"].as_i64().is_some_and(|g| g > 0), "{name}");
    }
}

/// A pod on an unreachable node waits for its kubelet (as in Kubernetes:
/// it may still be running); one on a node that is gone, or that its
/// operator tainted out-of-service, is deleted at once.
#[tokio::test]
async fn a_pod_waits_for_an_unreachable_kubelet_but_not_for_a_gone_node() {
    let w = world().await;
    w.registry.create("Node", "", &body(&node("lost", "Unknown")), None, false).await.unwrap();
    let mut shut_down = node("shut-down", "Unknown");
    shut_down["spec"] = json!({"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]});
    w.registry.create("Node", "", &body(&shut_down), None, false).await.unwrap();
    w.create("Pod", pod("on-lost-node", "lost")).await;
    w.create("Pod", pod("on-shut-down-node", "shut-down")).await;
    w.create("Pod", pod("on-no-node", "missing")).await;

    let marked = w.delete("Pod", "on-lost-node", None).await.unwrap();
    w.delete("Pod", "on-shut-down-node", None).await.unwrap();
    w.delete("Pod", "on-no-node", None).await.unwrap();

    assert!(!deletion_timestamp(&marked).is_empty(), "marked, waiting for its kubelet");
    assert!(w.get("Pod", "on-lost-node").await.is_ok());
    assert!(matches!(w.get("Pod", "on-shut-down-node").await, Err(Error::NotFound { .. })));
    assert!(matches!(w.get("Pod", "on-no-node").await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn a_stale_update_is_a_conflict_naming_the_object() {
    let w = world().await;
    let first = w.create("ConfigMap", config_map("cm", &[])).await;
    let mut newer = first.clone();
    newer["data"]["k"] = json!("newer");
    w.update("ConfigMap", &newer).await.unwrap();

    let mut stale = first;
    stale["data"]["k"] = json!("stale");
    let err = w.update("ConfigMap", &stale).await.unwrap_err();
    assert!(matches!(&err, Error::Conflict { name, .. } if name == "cm"), "{err:?}");
    assert!(err.to_string().contains("configmaps \"cm\""), "{err}");
    assert_eq!(w.get("ConfigMap", "cm").await.unwrap()["data"]["k"], "newer");
}

#[tokio::test]
async fn a_patch_or_delete_that_loses_a_race_reads_again_and_retries() {
    let w = world().await;
    w.create("ConfigMap", config_map("cm", &[])).await;

    w.store.interleave_writes(2);
    let patched = w
        .registry
        .patch("ConfigMap", "default", "cm", br#"{"data": {"k": "patched"}}"#, PatchType::Merge, false)
        .await
        .unwrap();
    assert_eq!(value(&patched)["data"]["k"], "patched");

    w.store.interleave_writes(2);
    w.delete("ConfigMap", "cm", None).await.unwrap();
    assert!(matches!(w.get("ConfigMap", "cm").await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn a_patch_that_keeps_losing_gives_up_with_a_conflict_naming_the_object() {
    let w = world().await;
    w.create("ConfigMap", config_map("busy", &[])).await;
    w.store.interleave_writes(u32::MAX);
    let before = w.store.revision();

    let err = w
        .registry
        .patch("ConfigMap", "default", "busy", br#"{"data": {"k": "x"}}"#, PatchType::Merge, false)
        .await
        .unwrap_err();

    assert!(matches!(&err, Error::Conflict { name, .. } if name == "busy"), "{err:?}");
    assert_eq!(w.store.revision() - before, CAS_ATTEMPTS as i64, "one interleaved write per attempt, none of ours");
}

#[tokio::test]
async fn a_patch_pinned_to_a_stale_version_is_not_retried() {
    let w = world().await;
    let created = w.create("ConfigMap", config_map("cm", &[])).await;
    w.update("ConfigMap", &json!({"metadata": {"name": "cm"}, "data": {"k": "moved on"}})).await.unwrap();
    let pinned = json!({"metadata": {"resourceVersion": meta::resource_version(&created)}, "data": {"k": "late"}});

    let err =
        w.registry.patch("ConfigMap", "default", "cm", &body(&pinned), PatchType::Merge, false).await.unwrap_err();

    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

fn deployment(image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

fn generation(v: &Value) -> i64 {
    v["metadata"]["generation"].as_i64().unwrap()
}

#[tokio::test]
async fn generation_counts_spec_changes_only() {
    let w = world().await;
    let created = w.create("Deployment", deployment("busybox:1")).await;
    assert_eq!(generation(&created), 1);

    let mut labelled = w.get("Deployment", "web").await.unwrap();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let labelled = w.update("Deployment", &labelled).await.unwrap();
    assert_eq!(generation(&labelled), 1, "metadata is not spec");

    let mut status = labelled.clone();
    status["status"] = json!({"replicas": 3});
    let status = value(&w.registry.update("Deployment", "default", &body(&status), true, false).await.unwrap());
    assert_eq!(generation(&status), 1, "status is not spec");

    let mut rolled = status;
    rolled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
    let rolled = w.update("Deployment", &rolled).await.unwrap();
    assert_eq!(generation(&rolled), 2);
    assert_eq!(rolled["status"]["replicas"], 3, "an Update keeps the status");
}

fn admin() -> crate::auth::UserInfo {
    crate::auth::UserInfo { name: "admin".into(), uid: String::new(), groups: vec!["system:masters".into()] }
}

fn pod_body(name: &str, spec: Value) -> Vec<u8> {
    body(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}))
}

/// The admission chain on a pod, as the Create call runs it: the object to
/// store (None: as sent) or the refusal.
async fn admit(w: &World, object: &[u8]) -> Result<Option<Value>, Error> {
    let admitted = crate::admission::admit_create(&w.registry, &admin(), "Pod", "default", object, false).await?;
    Ok(admitted.map(|b| value(&Bytes::from(b))))
}

/// A pod silent on automountServiceAccountToken takes its account's `false`;
/// a pod that says, or an account that allows, is left as it is.
#[tokio::test]
async fn a_pod_takes_its_service_accounts_automount_setting() {
    let w = world().await;
    w.create("ServiceAccount", json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false})).await;
    w.create("ServiceAccount", json!({"metadata": {"name": "open"}})).await;
    let pod = |account: &str, automount: Option<bool>| {
        let mut spec = json!({"serviceAccountName": account, "containers": [{"name": "c", "image": "busybox"}]});
        if let Some(a) = automount {
            spec["automountServiceAccountToken"] = json!(a);
        }
        pod_body("p", spec)
    };
    let quiet = admit(&w, &pod("quiet", None)).await.unwrap().expect("the pod is changed");
    assert_eq!(quiet["spec"]["automountServiceAccountToken"], false);
    assert!(admit(&w, &pod("quiet", Some(true))).await.unwrap().is_none(), "the pod's own word wins");
    assert!(admit(&w, &pod("open", None)).await.unwrap().is_none());
    assert!(admit(&w, &pod("missing", None)).await.unwrap().is_none());
}

/// A LimitRange's defaults fill a container's missing requests and limits;
/// a container past its max is refused, naming the bound and the range.
#[tokio::test]
async fn a_limit_range_defaults_and_bounds_containers() {
    let w = world().await;
    let range = json!({"metadata": {"name": "bounds"}, "spec": {"limits": [{"type": "Container",
        "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}}]}});
    w.create("LimitRange", range).await;
    let bare = pod_body("bare", json!({"containers": [{"name": "c", "image": "busybox"}]}));
    let admitted = admit(&w, &bare).await.unwrap().expect("defaults set");
    let resources = &admitted["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"], json!({"cpu": "500m", "memory": "128Mi"}));
    assert_eq!(
        resources["requests"],
        json!({"cpu": "100m", "memory": "128Mi"}),
        "memory's request is its default limit"
    );
    let limited = pod_body(
        "own",
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "800m"}}}]}),
    );
    let admitted = admit(&w, &limited).await.unwrap().expect("defaults set");
    assert!(admitted["spec"]["containers"][0]["resources"]["requests"]["cpu"].is_null(), "its limit is its request");
    let big = pod_body(
        "big",
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "2"}}}]}),
    );
    let refused = admit(&w, &big).await.unwrap_err().to_string();
    assert!(refused.contains("maximum cpu usage per Container is 1, but limit is 2"), "{refused}");
    assert!(refused.contains("LimitRange \"bounds\""), "{refused}");
}

/// A pod is charged to its namespace's quota by a compare-and-swap of the
/// quota's status; the one that would pass the limit is refused and
/// charges nothing; an unsynced quota admits nothing it limits.
#[tokio::test]
async fn a_resource_quota_charges_pods_and_refuses_the_one_too_many() {
    let w = world().await;
    w.create("ResourceQuota", json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}}))
        .await;
    let pod = |name: &str, cpu: &str| {
        pod_body(
            name,
            json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}),
        )
    };
    let unsynced = admit(&w, &pod("a", "100m")).await.unwrap_err().to_string();
    assert!(unsynced.contains("status unknown for quota: q"), "{unsynced}");
    // What the quota controller writes first.
    let mut q = w.get("ResourceQuota", "q").await.unwrap();
    q["status"] = json!({"hard": {"pods": "2", "requests.cpu": "1"}, "used": {"pods": "0", "requests.cpu": "0"}});
    w.registry.update("ResourceQuota", "default", &body(&q), true, false).await.unwrap();

    admit(&w, &pod("a", "400m")).await.unwrap();
    let too_much = admit(&w, &pod("b", "700m")).await.unwrap_err().to_string();
    assert!(
        too_much.contains(
            "exceeded quota: q, requested: requests.cpu=700m, used: requests.cpu=400m, limited: requests.cpu=1"
        ),
        "{too_much}"
    );
    admit(&w, &pod("b", "600m")).await.unwrap();
    let third = admit(&w, &pod("c", "0")).await.unwrap_err().to_string();
    assert!(third.contains("exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"), "{third}");
    let used = &w.get("ResourceQuota", "q").await.unwrap()["status"]["used"];
    assert_eq!(used, &json!({"pods": "2", "requests.cpu": "1"}), "refusals charged nothing");
    let no_request = pod_body("d", json!({"containers": [{"name": "c", "image": "busybox"}]}));
    let refused = admit(&w, &no_request).await.unwrap_err().to_string();
    assert!(refused.contains("must specify requests.cpu for: c"), "{refused}");
}

/// An update is charged what it adds, through every way of writing: a
/// Service patched to LoadBalancer past the quota is refused and left as
/// it was; within the quota it is charged.
#[tokio::test]
async fn an_update_that_adds_usage_is_charged_and_refused_past_the_quota() {
    let w = world().await;
    let hard = json!({"services.loadbalancers": "1"});
    w.create("ResourceQuota", json!({"metadata": {"name": "q"}, "spec": {"hard": hard}})).await;
    let mut q = w.get("ResourceQuota", "q").await.unwrap();
    q["status"] = json!({"hard": hard, "used": {"services.loadbalancers": "0"}});
    w.registry.update("ResourceQuota", "default", &body(&q), true, false).await.unwrap();
    let service = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                                     "spec": {"ports": [{"port": 80}]}})
    };
    w.create("Service", service("a")).await;
    w.create("Service", service("b")).await;
    let to_lb = body(&json!({"spec": {"type": "LoadBalancer"}}));

    w.registry.patch("Service", "default", "a", &to_lb, PatchType::Merge, false).await.unwrap();
    let used = &w.get("ResourceQuota", "q").await.unwrap()["status"]["used"];
    assert_eq!(used["services.loadbalancers"], "1", "the update was charged");
    let refused = w.registry.patch("Service", "default", "b", &to_lb, PatchType::Merge, false).await.unwrap_err();
    assert!(refused.to_string().contains("exceeded quota: q, requested: services.loadbalancers=1"), "{refused}");
    let b = w.get("Service", "b").await.unwrap();
    assert!(b["spec"]["type"].is_null() || b["spec"]["type"] == "ClusterIP", "refused, so unchanged: {b}");
    let relabel = body(&json!({"metadata": {"labels": {"x": "y"}}, "spec": {"ports": [{"port": 81}]}}));
    w.registry.patch("Service", "default", "a", &relabel, PatchType::Merge, false).await.unwrap();
}

#[tokio::test]
async fn dry_runs_answer_as_the_write_would_and_store_nothing() {
    let w = world().await;
    let cm = config_map("cm", &[]);
    let would = w.registry.create("ConfigMap", "default", &body(&cm), None, true).await.unwrap();
    assert_eq!(value(&would)["metadata"]["name"], "cm");
    assert!(matches!(w.get("ConfigMap", "cm").await, Err(Error::NotFound { .. })), "a dry create stores nothing");

    w.create("ConfigMap", cm.clone()).await;
    let err = w.registry.create("ConfigMap", "default", &body(&cm), None, true).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let patch = br#"{"data": {"k": "dry"}}"#;
    let would = w.registry.patch("ConfigMap", "default", "cm", patch, PatchType::Strategic, true).await.unwrap();
    assert_eq!(value(&would)["data"]["k"], "dry");
    assert_eq!(w.get("ConfigMap", "cm").await.unwrap()["data"]["k"], "v", "a dry patch changes nothing");
    let dry_delete = DeleteOptions { dry_run: true, ..Default::default() };
    w.registry.delete("ConfigMap", "default", "cm", &dry_delete).await.unwrap();
    assert!(w.get("ConfigMap", "cm").await.is_ok(), "a dry delete removes nothing");
}
