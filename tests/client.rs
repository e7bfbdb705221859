//! The controller machinery of skiff-client against a real etcd and
//! apiserver: an informer's cache converges to the API and its feed misses
//! nothing across an apiserver restart or a compacted history; leader
//! election on a Lease lets one candidate lead at a time and hands over.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use skiff_client::{Api, Error, Informer, InformerEvent, LeaderElector, LeaseTimings, ListParams, Store};
use skiff_testkit::{eventually, Cluster, ClusterOptions};
use tokio::sync::{mpsc, oneshot, watch};

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some([("v".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

fn value_of(cm: &ConfigMap) -> String {
    cm.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default()
}

fn name_of(cm: &ConfigMap) -> String {
    cm.metadata.name.clone().unwrap_or_default()
}

/// A stop signal for a run loop, and the future the loop waits on.
fn stop_signal() -> (oneshot::Sender<()>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// Replays an informer feed onto a map of name → value, as a subscriber that
/// only ever saw events would believe the world to be.
struct Mirror {
    rx: mpsc::UnboundedReceiver<InformerEvent<ConfigMap>>,
    seen: BTreeMap<String, String>,
    deleted: Vec<String>,
}

impl Mirror {
    fn new(rx: mpsc::UnboundedReceiver<InformerEvent<ConfigMap>>) -> Self {
        Self { rx, seen: BTreeMap::new(), deleted: Vec::new() }
    }

    fn apply(&mut self, event: InformerEvent<ConfigMap>) -> String {
        match event {
            InformerEvent::Added(cm) => {
                self.seen.insert(name_of(&cm), value_of(&cm));
                format!("added {}", name_of(&cm))
            }
            InformerEvent::Modified { old, new } => {
                assert_eq!(name_of(&old), name_of(&new));
                self.seen.insert(name_of(&new), value_of(&new));
                format!("modified {} {}->{}", name_of(&new), value_of(&old), value_of(&new))
            }
            InformerEvent::Deleted(cm) => {
                self.seen.remove(&name_of(&cm));
                self.deleted.push(name_of(&cm));
                format!("deleted {}", name_of(&cm))
            }
        }
    }

    async fn next(&mut self) -> String {
        let event = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("an informer event within 30s")
            .expect("the informer is running");
        self.apply(event)
    }

    /// Applies events until the mirror equals `want`.
    async fn converge(&mut self, want: &BTreeMap<String, String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while &self.seen != want {
            let event = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("feed did not converge: have {:?}, want {want:?}", self.seen))
                .expect("the informer is running");
            self.apply(event);
        }
    }
}

async fn api_state(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    api.list(&ListParams::default()).await.unwrap().items.iter().map(|cm| (name_of(cm), value_of(cm))).collect()
}

fn store_state(store: &Store<ConfigMap>) -> BTreeMap<String, String> {
    store.list().iter().map(|cm| (name_of(cm), value_of(cm))).collect()
}

#[tokio::test]
async fn informer_cache_converges_and_sees_add_modify_delete() {
    let cluster = Cluster::start().await.expect("cluster");
    let api = cluster.client().api::<ConfigMap>("default");
    for name in ["a", "b"] {
        api.create(&config_map(name, "1")).await.unwrap();
    }

    let informer = Informer::new(api.clone(), ListParams::default());
    let store = informer.store();
    let mut mirror = Mirror::new(informer.subscribe());
    let (stop, stopped) = stop_signal();
    let run = tokio::spawn(informer.run(stopped));
    store.wait_synced().await.unwrap();
    assert_eq!(store_state(&store), api_state(&api).await);
    let mut initial = vec![mirror.next().await, mirror.next().await];
    initial.sort();
    assert_eq!(initial, ["added a", "added b"]);

    api.create(&config_map("c", "1")).await.unwrap();
    assert_eq!(mirror.next().await, "added c");
    let mut a = api.get("a").await.unwrap();
    a.data = config_map("a", "2").data;
    api.update(&a).await.unwrap();
    assert_eq!(mirror.next().await, "modified a 1->2");
    api.delete("b").await.unwrap();
    assert_eq!(mirror.next().await, "deleted b");

    let want = api_state(&api).await;
    assert_eq!(want.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(store_state(&store), want);
    assert_eq!(store.get("default/a").map(|cm| value_of(&cm)).as_deref(), Some("2"));
    assert!(store.get("default/b").is_none());

    let _ = stop.send(());
    run.await.unwrap();
}

#[tokio::test]
async fn informer_survives_apiserver_restart_and_compaction_without_losing_events() {
    // A small history ring, so that resuming reaches back past what the
    // restarted apiserver's cache holds.
    let options = ClusterOptions { apiserver_args: vec!["--watch-cache-events=4".into()], ..Default::default() };
    let mut cluster = Cluster::start_with(options).await.expect("cluster");
    let api = cluster.client().api::<ConfigMap>("default");
    for i in 0..3 {
        api.create(&config_map(&format!("before-{i}"), "1")).await.unwrap();
    }
    let informer = Informer::new(api.clone(), ListParams::default());
    let store = informer.store();
    let mut mirror = Mirror::new(informer.subscribe());
    let (stop, stopped) = stop_signal();
    let run = tokio::spawn(informer.run(stopped));
    store.wait_synced().await.unwrap();
    mirror.converge(&api_state(&api).await).await;

    // Restart: changes made while the informer reconnects reach it.
    cluster.restart_apiserver().await.expect("restart");
    for i in 0..10 {
        api.create(&config_map(&format!("after-{i}"), "1")).await.unwrap();
    }
    api.delete("before-0").await.unwrap();
    let mut b1 = api.get("before-1").await.unwrap();
    b1.data = config_map("before-1", "2").data;
    api.update(&b1).await.unwrap();
    let want = api_state(&api).await;
    mirror.converge(&want).await;
    assert!(mirror.deleted.contains(&"before-0".to_string()));
    assert_eq!(store_state(&store), want);

    // A deletion while the apiserver is down, with etcd's history compacted
    // past it: the informer must relist, and still report the deletion.
    cluster.stop_apiserver();
    let mut etcd = cluster.etcd_client().await.unwrap();
    etcd.delete("/registry/configmaps/default/before-2", None).await.unwrap();
    let put = etcd.put("/skiff-test/bump", "x", None).await.unwrap();
    let revision = put.header().map(|h| h.revision()).expect("etcd answers with a header");
    etcd.compact(revision, None).await.unwrap();
    cluster.start_apiserver().await.expect("start");
    api.create(&config_map("after-restart", "1")).await.unwrap();

    let want = api_state(&api).await;
    assert!(!want.contains_key("before-2"));
    mirror.converge(&want).await;
    assert!(mirror.deleted.contains(&"before-2".to_string()), "deletion seen only by a relist was reported");
    assert_eq!(store_state(&store), want);

    let _ = stop.send(());
    run.await.unwrap();
}

// === leader election ===

const LEASE: Duration = Duration::from_secs(6);

/// Short timings, but with a renew deadline that a loaded 2-core CI machine
/// still meets (at 1.2 s a slow renewal could make the leader step down).
fn fast() -> LeaseTimings {
    LeaseTimings {
        lease_duration: LEASE,
        renew_deadline: Duration::from_secs(4),
        retry_period: Duration::from_millis(200),
    }
}

/// Counts candidates doing leader work right now, and the most ever at once.
#[derive(Clone, Default)]
struct Leaders {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

struct Leading(Arc<AtomicUsize>);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Leaders {
    fn work(&self) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let n = this.now.fetch_add(1, Ordering::SeqCst) + 1;
            let _guard = Leading(this.now.clone());
            this.max.fetch_max(n, Ordering::SeqCst);
            std::future::pending::<()>().await
        }
    }
}

async fn until_leading(rx: &mut watch::Receiver<bool>, within: Duration) {
    tokio::time::timeout(within, rx.wait_for(|l| *l)).await.expect("became leader in time").unwrap();
}

async fn holder(api: &Api<Lease>) -> String {
    let lease = api.get("lock").await.unwrap();
    lease.spec.and_then(|s| s.holder_identity).unwrap_or_default()
}

/// Milliseconds from `from` to `to`, two of the lease's timestamps.
fn millis_between(from: &Option<MicroTime>, to: &Option<MicroTime>) -> i64 {
    to.as_ref().unwrap().0.as_millisecond() - from.as_ref().unwrap().0.as_millisecond()
}

#[tokio::test]
async fn two_leader_electors_take_turns_on_one_lease() {
    let cluster = Cluster::start().await.expect("cluster");
    let api = cluster.client().api::<Lease>("kube-system");
    let leaders = Leaders::default();

    let a = LeaderElector::new(api.clone(), "lock", "a").with_timings(fast()).unwrap();
    let b = LeaderElector::new(api.clone(), "lock", "b").with_timings(fast()).unwrap();
    let (mut a_leads, mut b_leads) = (a.leading(), b.leading());
    let (stop_a, a_stopped) = stop_signal();
    let (stop_b, b_stopped) = stop_signal();
    let a_run = tokio::spawn(a.run(leaders.work(), a_stopped));
    until_leading(&mut a_leads, Duration::from_secs(10)).await;
    let b_run = tokio::spawn(b.run(leaders.work(), b_stopped));

    // Well past the lease duration: a renews, b waits.
    let term = LEASE.as_millis() as i64;
    eventually("a renews past its first term", || async {
        let spec = api.get("lock").await.ok()?.spec?;
        (millis_between(&spec.acquire_time, &spec.renew_time) > term + 1000).then_some(())
    })
    .await;
    assert!(*a_leads.borrow() && !*b_leads.borrow());
    assert_eq!(holder(&api).await, "a");

    // a stops and releases the lease: b takes over without waiting for
    // expiry, i.e. less than a lease duration after a's last renewal (at or
    // after the one read here).
    let a_renewed = api.get("lock").await.unwrap().spec.unwrap().renew_time;
    let _ = stop_a.send(());
    a_run.await.unwrap().unwrap();
    until_leading(&mut b_leads, Duration::from_secs(20)).await;
    assert_eq!(holder(&api).await, "b");
    let lease = api.get("lock").await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_transitions, Some(1));
    let waited = millis_between(&a_renewed, &lease.acquire_time);
    assert!(waited < term, "b waited {waited} ms after a's last renewal: the release was not used");

    // A third candidate, then b dies without releasing (its task is
    // aborted): c takes over once the lease has expired.
    let c = LeaderElector::new(api.clone(), "lock", "c").with_timings(fast()).unwrap();
    let mut c_leads = c.leading();
    let (stop_c, c_stopped) = stop_signal();
    let c_run = tokio::spawn(c.run(leaders.work(), c_stopped));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!*c_leads.borrow());
    b_run.abort();
    let _ = b_run.await;
    drop(stop_b);
    until_leading(&mut c_leads, Duration::from_secs(20)).await;
    assert_eq!(holder(&api).await, "c");

    let _ = stop_c.send(());
    c_run.await.unwrap().unwrap();
    assert_eq!(holder(&api).await, "");
    assert_eq!(leaders.max.load(Ordering::SeqCst), 1, "two leaders at once");
    assert_eq!(leaders.now.load(Ordering::SeqCst), 0, "leader work left running");
}

#[tokio::test]
async fn leader_steps_down_when_the_apiserver_is_gone() {
    let mut cluster = Cluster::start().await.expect("cluster");
    let api = cluster.client().api::<Lease>("kube-system");
    let leaders = Leaders::default();
    let a = LeaderElector::new(api.clone(), "lock", "a").with_timings(fast()).unwrap();
    let mut a_leads = a.leading();
    let (_stop, stopped) = stop_signal();
    let run = tokio::spawn(a.run(leaders.work(), stopped));
    until_leading(&mut a_leads, Duration::from_secs(10)).await;

    cluster.stop_apiserver();
    let result = tokio::time::timeout(Duration::from_secs(10), run).await.expect("stepped down").unwrap();
    assert!(matches!(result, Err(Error::LeaseRenewTimedOut { .. })), "{result:?}");
    assert!(!*a_leads.borrow());
    assert_eq!(leaders.now.load(Ordering::SeqCst), 0, "leader work must stop");
}
