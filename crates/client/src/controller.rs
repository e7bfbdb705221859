//! The one controller shape every skiff controller uses, after kube-rs'
//! `Controller` and client-go's work-queue pattern: event handlers map
//! objects to keys on a [`WorkQueue`], and workers pop keys and call
//! [`Reconcile::reconcile`], which reads the informer caches, compares
//! desired with observed state and writes through the API.
//!
//! The runner owns the loop's rules so that no controller re-implements
//! them: workers start only after the caches have synced, one key is never
//! reconciled twice at once (the queue guarantees it), a success resets the
//! key's back-off, an error retries it with per-key exponential back-off, and
//! [`Action::requeue`] brings a key back after a delay for time-based work.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::{Object, Result, Store, WorkQueue};

/// What to do with a key after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue: Requeue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requeue {
    /// Nothing more to do until an event brings the key back.
    Never,
    After(Duration),
    /// Retry after the queue's per-key back-off (and lengthen it).
    Backoff,
}

impl Action {
    /// The key is in its desired state; wait for the next event.
    pub fn done() -> Self {
        Self { requeue: Requeue::Never }
    }

    /// Reconcile the key again after `after`, even without an event (a
    /// deadline, a toleration running out).
    pub fn requeue(after: Duration) -> Self {
        Self { requeue: Requeue::After(after) }
    }

    /// Retry after the queue's per-key exponential back-off: what an error
    /// gets by default.
    pub fn backoff() -> Self {
        Self { requeue: Requeue::Backoff }
    }

    /// The delay before the key comes back, when it is a fixed one.
    pub fn requeue_after(&self) -> Option<Duration> {
        match self.requeue {
            Requeue::After(d) => Some(d),
            _ => None,
        }
    }
}

/// One controller: reconciles the object (or whatever else) named by a key.
///
/// `reconcile` must be idempotent and level-triggered: it is called again
/// for the same key whenever anything it depends on may have changed, and
/// after errors.
pub trait Reconcile: Send + Sync + 'static {
    /// Names the controller in logs and metrics (`replicaset`).
    const NAME: &'static str;
    type Error: std::error::Error + Send + Sync + 'static;

    fn reconcile(&self, key: &str) -> impl Future<Output = std::result::Result<Action, Self::Error>> + Send;

    /// The W3C `traceparent` the reconcile of `key` continues, if any:
    /// usually the object's [`TRACE_CONTEXT_ANNOTATION`], read with
    /// [`trace_parent_of`]. Without one, each reconcile is a trace of its own.
    ///
    /// [`TRACE_CONTEXT_ANNOTATION`]: skiff_api::well_known::TRACE_CONTEXT_ANNOTATION
    fn trace_parent(&self, _key: &str) -> Option<String> {
        None
    }

    /// What to do after `reconcile` failed for `key`; by default, retry
    /// after the key's back-off.
    fn error_policy(&self, _key: &str, _error: &Self::Error) -> Action {
        Action::backoff()
    }
}

/// Something whose first sync workers wait for: an informer's [`Store`].
pub trait CacheSync: Send + Sync {
    fn wait_synced(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

impl<K: Object> CacheSync for Store<K> {
    fn wait_synced(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
        Box::pin(Store::wait_synced(self))
    }
}

/// The trace context an object carries from the traced request that created
/// it, for [`Reconcile::trace_parent`].
pub fn trace_parent_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.annotations.as_ref()?.get(skiff_api::well_known::TRACE_CONTEXT_ANNOTATION).cloned()
}

/// Waits until every cache has synced: what a loop does before it trusts
/// its caches. Fails with the first cache whose informer stopped before it
/// synced (the error names its kind).
pub async fn wait_all_synced(caches: &[&dyn CacheSync]) -> Result<()> {
    for cache in caches {
        cache.wait_synced().await?;
    }
    Ok(())
}

/// How one reconcile went, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "success",
            Outcome::Error => "error",
        }
    }
}

type Observer = Arc<dyn Fn(&'static str, Outcome, Duration) + Send + Sync>;

/// Runs a [`Reconcile`] over a queue of keys. Build it, then [`run`](Self::run).
pub struct Controller<R> {
    reconciler: Arc<R>,
    queue: WorkQueue<String>,
    workers: usize,
    caches: Vec<Arc<dyn CacheSync>>,
    observer: Option<Observer>,
}

impl<R: Reconcile> Controller<R> {
    pub fn new(reconciler: Arc<R>, queue: WorkQueue<String>) -> Self {
        Self { reconciler, queue, workers: 1, caches: Vec::new(), observer: None }
    }

    /// How many keys are reconciled at once (at least 1).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Workers wait until `cache` has synced.
    pub fn wait_for(mut self, cache: Arc<dyn CacheSync>) -> Self {
        self.caches.push(cache);
        self
    }

    /// Called after every reconcile with the controller's name, the outcome
    /// and how long it took (for metrics).
    pub fn observe(mut self, observer: impl Fn(&'static str, Outcome, Duration) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Waits for the caches, then reconciles keys until `shutdown`
    /// completes. Then it shuts the queue down and waits for the keys in
    /// flight. Dropping the future stops the workers too (they live in a
    /// `JoinSet`), so it may be raced against a lost lease.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Controller { reconciler, queue, workers, caches, observer } = self;
        tokio::pin!(shutdown);
        let caches: Vec<&dyn CacheSync> = caches.iter().map(|c| c.as_ref()).collect();
        let synced = wait_all_synced(&caches);
        tokio::select! {
            _ = &mut shutdown => {
                queue.shutdown();
                return Ok(());
            }
            synced = synced => synced?,
        }
        tracing::info!(controller = R::NAME, workers, "caches synced, starting workers");
        let mut set = JoinSet::new();
        for _ in 0..workers {
            set.spawn(worker(reconciler.clone(), queue.clone(), observer.clone()));
        }
        shutdown.await;
        queue.shutdown();
        while set.join_next().await.is_some() {}
        tracing::info!(controller = R::NAME, "stopped");
        Ok(())
    }
}

/// Same as `Controller::new(reconciler, queue).workers(workers).run(shutdown)`,
/// for controllers that wait on no cache.
pub async fn run_controller<R: Reconcile>(
    reconciler: Arc<R>,
    queue: WorkQueue<String>,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    Controller::new(reconciler, queue).workers(workers).run(shutdown).await
}

async fn worker<R: Reconcile>(reconciler: Arc<R>, queue: WorkQueue<String>, observer: Option<Observer>) {
    while let Some(key) = queue.get().await {
        let started = Instant::now();
        let span = tracing::info_span!("reconcile", controller = R::NAME, %key);
        if let Some(parent) = reconciler.trace_parent(&key) {
            skiff_telemetry::set_parent_from_traceparent(&span, &parent);
        }
        let result = reconciler.reconcile(&key).instrument(span).await;
        let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Error };
        if let Some(observe) = &observer {
            observe(R::NAME, outcome, started.elapsed());
        }
        let action = match result {
            Ok(action) => {
                queue.forget(&key);
                action
            }
            Err(error) => {
                tracing::warn!(controller = R::NAME, %key, error = %ErrorChain(&error), "reconcile failed");
                reconciler.error_policy(&key, &error)
            }
        };
        match action.requeue {
            Requeue::Never => {}
            Requeue::After(after) => queue.add_after(key.clone(), after),
            Requeue::Backoff => queue.add_rate_limited(key.clone()),
        }
        queue.done(&key);
    }
}

/// An error with its sources, `a: b: c`, for one log line.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::sync::{oneshot, watch};

    #[derive(Debug, thiserror::Error)]
    #[error("fake failure")]
    struct Fail;

    /// Fails a key `fail_times` times, requeues "tick" twice, and records
    /// every call and the most reconciles of one key at once.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        fail_times: Mutex<HashMap<String, usize>>,
        in_flight: Mutex<HashMap<String, usize>>,
        most_at_once: AtomicUsize,
        ticks: AtomicUsize,
    }

    impl Reconcile for Fake {
        const NAME: &'static str = "fake";
        type Error = Fail;

        async fn reconcile(&self, key: &str) -> std::result::Result<Action, Fail> {
            {
                let mut in_flight = self.in_flight.lock().unwrap();
                let n = in_flight.entry(key.to_string()).or_default();
                *n += 1;
                self.most_at_once.fetch_max(*n, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            *self.in_flight.lock().unwrap().get_mut(key).unwrap() -= 1;
            self.calls.lock().unwrap().push(key.to_string());
            if let Some(left) = self.fail_times.lock().unwrap().get_mut(key).filter(|n| **n > 0) {
                *left -= 1;
                return Err(Fail);
            }
            if key == "tick" && self.ticks.fetch_add(1, Ordering::SeqCst) < 2 {
                return Ok(Action::requeue(Duration::from_millis(20)));
            }
            Ok(Action::done())
        }
    }

    impl Fake {
        fn count(&self, key: &str) -> usize {
            self.calls.lock().unwrap().iter().filter(|k| *k == key).count()
        }
    }

    struct Gate(watch::Receiver<bool>);

    impl CacheSync for Gate {
        fn wait_synced(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
            let mut rx = self.0.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|s| *s).await;
                Ok(())
            })
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waits_for_sync_then_retries_requeues_and_never_overlaps_a_key() {
        let fake = Arc::new(Fake::default());
        fake.fail_times.lock().unwrap().insert("flaky".into(), 3);
        let queue =
            WorkQueue::with_backoff(crate::Backoff { base: Duration::from_millis(1), max: Duration::from_millis(50) });
        let (synced_tx, synced_rx) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let controller =
            Controller::new(fake.clone(), queue.clone()).workers(4).wait_for(Arc::new(Gate(synced_rx))).observe({
                let outcomes = outcomes.clone();
                move |name, outcome, _| outcomes.lock().unwrap().push((name, outcome))
            });
        let task = tokio::spawn(controller.run(async move {
            let _ = stopped.await;
        }));

        queue.add("a".to_string());
        queue.add("flaky".to_string());
        queue.add("tick".to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(fake.calls.lock().unwrap().is_empty(), "no reconcile before the caches synced");

        synced_tx.send_replace(true);
        eventually("flaky to succeed", || fake.count("flaky") == 4).await;
        assert_eq!(queue.num_requeues(&"flaky".to_string()), 0, "success forgets the back-off");
        eventually("tick to be requeued twice", || fake.count("tick") == 3).await;

        // A storm of adds for one key while it is being reconciled.
        for _ in 0..200 {
            queue.add("a".to_string());
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.most_at_once.load(Ordering::SeqCst), 1, "one reconcile per key at a time");
        assert!(fake.count("a") >= 2 && fake.count("a") < 200, "adds are deduplicated: {}", fake.count("a"));

        let errors = outcomes.lock().unwrap().iter().filter(|(n, o)| *n == "fake" && *o == Outcome::Error).count();
        assert_eq!(errors, 3);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap().unwrap();
        assert!(queue.is_shutting_down());
    }

    #[tokio::test]
    async fn shutdown_before_sync_returns() {
        let fake = Arc::new(Fake::default());
        let (_tx, rx) = watch::channel(false);
        let queue = WorkQueue::new();
        let run = Controller::new(fake, queue.clone()).wait_for(Arc::new(Gate(rx))).run(async {});
        tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
        assert!(queue.is_shutting_down());
    }

    #[test]
    fn actions() {
        assert_eq!(Action::done().requeue_after(), None);
        assert_eq!(Action::requeue(Duration::from_secs(3)).requeue_after(), Some(Duration::from_secs(3)));
        assert_eq!(Action::backoff().requeue_after(), None);
        assert_ne!(Action::backoff(), Action::done());
    }
}
