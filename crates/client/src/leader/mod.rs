//! Leader election on a coordination.k8s.io/v1 Lease, after client-go's
//! leaderelection, so that only one replica of the scheduler or the
//! controller-manager acts at a time.
//!
//! A candidate takes the lease when it is absent, released, expired
//! (`renewTime + leaseDurationSeconds` has passed) or already its own, and
//! every write is a compare-and-swap on the resourceVersion it read, so of
//! two candidates racing for one lease exactly one wins. The leader renews
//! every `retry_period`; if it cannot renew within `renew_deadline` it steps
//! down. `renew_deadline < lease_duration` is what makes this safe: the old
//! leader has stopped before anyone else may consider the lease expired.
//!
//! Expiry is judged by the timestamps in the lease, so the hosts' clocks must
//! agree to well within `lease_duration - renew_deadline` (skiff's hosts share
//! one clock or run NTP). client-go avoids that assumption by timing expiry on
//! the candidate's own clock from when it first saw the record, at the cost of
//! every new candidate waiting a full lease duration; we prefer the faster
//! takeover.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rand::Rng;
use skiff_api::clock;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Api, Error, Result};

mod flags;
pub use flags::LeaderElectionFlags;

/// How long a lease lasts and how hard its holder tries to keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long others wait after the last renewal before taking the lease.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    /// client-go's defaults: 15s / 10s / 2s.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Acquire attempts wait `retry_period` plus up to this fraction of it, so
/// candidates that started together do not hit the apiserver in step.
const ACQUIRE_JITTER: f64 = 0.2;

impl LeaseTimings {
    fn validate(&self) -> Result<()> {
        let reason = if self.lease_duration < Duration::from_secs(1) {
            "lease_duration must be at least 1s (the lease counts whole seconds)"
        } else if self.renew_deadline >= self.lease_duration {
            "renew_deadline must be shorter than lease_duration"
        } else if self.renew_deadline <= self.retry_period.mul_f64(1.0 + ACQUIRE_JITTER) {
            "renew_deadline must be longer than retry_period with jitter (1.2 x)"
        } else if self.retry_period.is_zero() {
            "retry_period must not be zero"
        } else {
            return Ok(());
        };
        Err(Error::InvalidLeaseTimings { reason })
    }
}

/// One candidate for one lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    leading: watch::Sender<bool>,
}

/// What one acquire-or-renew attempt found.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// We hold the lease until at least `lease_duration` from now.
    Held,
    /// Someone else holds a valid lease.
    HeldBy(String),
    /// Someone wrote the lease between our read and our write; read again.
    Raced,
}

// === impl LeaderElector ===

impl LeaderElector {
    /// A candidate named `identity` (unique per replica, e.g. host name plus
    /// a random suffix) for the lease `name` in `api`'s namespace, with the
    /// default timings.
    pub fn new(api: Api<Lease>, name: &str, identity: &str) -> Self {
        Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timings: LeaseTimings::default(),
            leading: watch::Sender::new(false),
        }
    }

    /// Replaces the default timings; fails unless
    /// `retry_period * 1.2 < renew_deadline < lease_duration`.
    pub fn with_timings(mut self, timings: LeaseTimings) -> Result<Self> {
        timings.validate()?;
        self.timings = timings;
        Ok(self)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this candidate leads now; turns false before `on_leading` is
    /// stopped.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Waits for the lease, then runs `on_leading` while renewing it.
    ///
    /// Returns `Ok` after `shutdown` completes or `on_leading` finishes, having
    /// released the lease so another candidate takes over at once. Returns
    /// [`Error::LeaseLost`] or [`Error::LeaseRenewTimedOut`] when leadership
    /// was lost; the caller should then exit (or start over as a candidate),
    /// as client-go's users do. Either way `on_leading` has been dropped, so
    /// it must stop all its work when dropped (hold spawned tasks in a
    /// `JoinSet`, for instance).
    pub async fn run(self, on_leading: impl Future<Output = ()>, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = self.acquire() => {}
        }
        tracing::info!(lease = %self.lease_key(), identity = %self.identity, "became leader");
        self.leading.send_replace(true);

        // `on_leading` is moved into the select and dropped when it ends,
        // whichever branch wins.
        let ended = tokio::select! {
            _ = &mut shutdown => Ok(()),
            _ = on_leading => Ok(()),
            lost = self.keep_renewing() => Err(lost),
        };
        self.leading.send_replace(false);
        match ended {
            Ok(()) => {
                self.release().await;
                Ok(())
            }
            Err(lost) => {
                tracing::warn!(error = %lost, "stepped down");
                Err(lost)
            }
        }
    }

    /// Tries until the lease is ours.
    async fn acquire(&self) {
        loop {
            match tokio::time::timeout(self.timings.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => return,
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    tracing::debug!(lease = %self.lease_key(), %holder, "lease held by another candidate");
                }
                Ok(Ok(Attempt::Raced)) => tracing::debug!(lease = %self.lease_key(), "lost a race for the lease"),
                Ok(Err(error)) => tracing::warn!(lease = %self.lease_key(), %error, "acquiring lease failed"),
                Err(_) => tracing::warn!(lease = %self.lease_key(), "acquiring lease timed out"),
            }
            let jitter = rand::rng().random_range(0.0..=ACQUIRE_JITTER);
            tokio::time::sleep(self.timings.retry_period.mul_f64(1.0 + jitter)).await;
        }
    }

    /// Renews every `retry_period`; returns why leadership ended.
    async fn keep_renewing(&self) -> Error {
        // Counted from the start of the attempt that succeeded: the lease's
        // renewTime is no earlier than that, so stepping down by
        // `renewed + renew_deadline` is before anyone may take over.
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            let deadline = renewed + self.timings.renew_deadline;
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => renewed = started,
                Ok(Ok(Attempt::HeldBy(holder))) => return Error::LeaseLost { lease: self.lease_key(), holder },
                Ok(Ok(Attempt::Raced)) => tracing::debug!(lease = %self.lease_key(), "renewal raced, retrying"),
                Ok(Err(error)) => tracing::warn!(lease = %self.lease_key(), %error, "renewing lease failed"),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Error::LeaseRenewTimedOut { lease: self.lease_key(), deadline: self.timings.renew_deadline };
            }
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt> {
        let duration = self.timings.lease_duration;
        let mut lease = match self.api.get(&self.name).await {
            Ok(lease) => lease,
            Err(e) if e.is_not_found() => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.api.namespace().to_string()).filter(|ns| !ns.is_empty()),
                        ..Default::default()
                    },
                    spec: Some(acquired(None, &self.identity, duration, clock::now())),
                };
                return match self.api.create(&lease).await {
                    Ok(_) => Ok(Attempt::Held),
                    Err(e) if e.is_already_exists() => Ok(Attempt::Raced),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if lease.metadata.resource_version.as_deref().unwrap_or("").is_empty() {
            // Without a version the update would not be a compare-and-swap
            // and could overwrite a rival's win; the apiserver always sends
            // one, so this only guards against a broken server.
            tracing::warn!(lease = %self.lease_key(), "lease has no resourceVersion; not writing it");
            return Ok(Attempt::Raced);
        }
        match decide(lease.spec.as_ref(), &self.identity, duration, clock::now()) {
            Decision::HeldBy(holder) => Ok(Attempt::HeldBy(holder)),
            Decision::Write(spec) => {
                lease.spec = Some(spec);
                match self.api.update(&lease).await {
                    Ok(_) => Ok(Attempt::Held),
                    Err(e) if e.is_conflict() || e.is_not_found() => Ok(Attempt::Raced),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Hands the lease back so the next candidate need not wait for it to
    /// expire. Best effort: if it fails, the lease simply runs out.
    async fn release(&self) {
        let attempt = async {
            let mut lease = self.api.get(&self.name).await?;
            let Some(spec) = lease.spec.as_ref().filter(|s| s.holder_identity.as_deref() == Some(&self.identity))
            else {
                return Ok(false);
            };
            lease.spec = Some(released(spec, clock::now()));
            self.api.update(&lease).await.map(|_| true)
        };
        match tokio::time::timeout(self.timings.renew_deadline, attempt).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.lease_key(), "released lease"),
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(lease = %self.lease_key(), %error, "releasing lease failed"),
            Err(_) => tracing::warn!(lease = %self.lease_key(), "releasing lease timed out"),
        }
    }

    /// `namespace/name` of the lease this candidate competes for.
    pub fn lease_key(&self) -> String {
        skiff_api::meta::object_key(self.api.namespace(), &self.name)
    }
}

// === decisions ===

/// What a candidate should do with the lease it read.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Write this spec (compare-and-swap); on success we hold the lease.
    Write(LeaseSpec),
    /// Someone else holds a lease that has not expired.
    HeldBy(String),
}

fn decide(current: Option<&LeaseSpec>, identity: &str, duration: Duration, now: Timestamp) -> Decision {
    let Some(current) = current else {
        return Decision::Write(acquired(None, identity, duration, now));
    };
    let holder = current.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        Decision::Write(renewed(current, duration, now))
    } else if holder.is_empty() || is_expired(current, now) {
        Decision::Write(acquired(Some(current), identity, duration, now))
    } else {
        Decision::HeldBy(holder.to_string())
    }
}

/// Whether the holder's claim has run out. A lease without a renewal time
/// or a positive duration is treated as free.
fn is_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let seconds = spec.lease_duration_seconds.unwrap_or(0);
    if seconds <= 0 {
        return true;
    }
    match renewed.0.checked_add(SignedDuration::from_secs(i64::from(seconds))) {
        Ok(until) => until < now,
        // Out of jiff's range: far in the future, so not expired.
        Err(_) => false,
    }
}

/// The spec of a lease newly taken by `identity`, from `previous` if any.
fn acquired(previous: Option<&LeaseSpec>, identity: &str, duration: Duration, now: Timestamp) -> LeaseSpec {
    let transitions = match previous {
        // Counted like client-go: every change of holder, including taking
        // a released lease.
        Some(p) => p.lease_transitions.unwrap_or(0).saturating_add(1),
        None => 0,
    };
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(lease_seconds(duration)),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..previous.cloned().unwrap_or_default()
    }
}

fn renewed(current: &LeaseSpec, duration: Duration, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        lease_duration_seconds: Some(lease_seconds(duration)),
        renew_time: Some(MicroTime(now)),
        acquire_time: current.acquire_time.clone().or(Some(MicroTime(now))),
        lease_transitions: current.lease_transitions.or(Some(0)),
        ..current.clone()
    }
}

/// A lease given up: no holder, and a one-second duration so that even a
/// candidate that ignores the empty holder waits at most a second.
fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// Whole seconds, rounded up so the lease never claims less than asked.
fn lease_seconds(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
    }

    fn held(holder: &str, renewed_at: i64, seconds: i32, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed_at))),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn written(d: Decision) -> LeaseSpec {
        match d {
            Decision::Write(spec) => spec,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn absent_lease_is_created_for_us() {
        let spec = written(decide(None, "me", D, at(5)));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(5))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn valid_lease_of_another_is_left_alone() {
        let current = held("other", 10, 15, 3);
        assert_eq!(decide(Some(&current), "me", D, at(20)), Decision::HeldBy("other".into()));
        // Exactly at the end it is still valid; one second later it is not.
        assert_eq!(decide(Some(&current), "me", D, at(25)), Decision::HeldBy("other".into()));
        assert!(matches!(decide(Some(&current), "me", D, at(26)), Decision::Write(_)));
    }

    #[test]
    fn expired_lease_is_taken_and_counts_a_transition() {
        let current = held("other", 10, 15, 3);
        let spec = written(decide(Some(&current), "me", D, at(30)));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(30))));
        assert_eq!(spec.lease_transitions, Some(4));
    }

    #[test]
    fn our_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let current = held("me", 10, 15, 3);
        let spec = written(decide(Some(&current), "me", Duration::from_secs(20), at(12)));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(12))));
        assert_eq!(spec.lease_duration_seconds, Some(20));
        assert_eq!(spec.lease_transitions, Some(3));
        // Even when it has expired meanwhile, it is still ours to renew.
        let spec = written(decide(Some(&current), "me", D, at(100)));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn released_lease_is_free_at_once() {
        let mine = held("me", 10, 15, 3);
        let released = released(&mine, at(11));
        assert_eq!(released.holder_identity.as_deref(), Some(""));
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
        let spec = written(decide(Some(&released), "other", D, at(11)));
        assert_eq!(spec.holder_identity.as_deref(), Some("other"));
        assert_eq!(spec.lease_transitions, Some(4));
    }

    #[test]
    fn malformed_leases_count_as_expired() {
        let no_times = LeaseSpec { holder_identity: Some("other".into()), ..Default::default() };
        assert!(is_expired(&no_times, at(0)));
        let no_duration = LeaseSpec { lease_duration_seconds: None, ..held("other", 10, 15, 0) };
        assert!(is_expired(&no_duration, at(10)));
        let negative = held("other", 10, -5, 0);
        assert!(is_expired(&negative, at(10)));
        // Falls back to acquireTime when renewTime is missing.
        let acquired_only = LeaseSpec { renew_time: None, ..held("other", 10, 15, 0) };
        assert!(!is_expired(&acquired_only, at(15)));
        assert!(is_expired(&acquired_only, at(16)));
        // An empty spec is free to take.
        assert!(matches!(decide(Some(&LeaseSpec::default()), "me", D, at(0)), Decision::Write(_)));
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_millis(10)), 1);
        assert_eq!(lease_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn timings_are_validated() {
        assert!(LeaseTimings::default().validate().is_ok());
        let bad = |lease, renew, retry| LeaseTimings {
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
        };
        assert!(bad(15_000, 15_000, 2_000).validate().is_err());
        assert!(bad(15_000, 2_000, 2_000).validate().is_err());
        assert!(bad(500, 200, 100).validate().is_err());
        assert!(bad(15_000, 10_000, 0).validate().is_err());
        assert!(bad(2_000, 1_000, 200).validate().is_ok());
    }

    // === run loop, against the in-memory apiserver ===

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::fake_server::FakeApiserver;

    fn fast() -> LeaseTimings {
        LeaseTimings {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1000),
            retry_period: Duration::from_millis(100),
        }
    }

    /// Counts the candidates running their leader work right now.
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

    fn stop_signal() -> (tokio::sync::oneshot::Sender<()>, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_handover_on_release() {
        let server = FakeApiserver::start().await;
        let api = server.client.api::<Lease>("kube-system");
        let leaders = Leaders::default();

        let a = LeaderElector::new(api.clone(), "lock", "a").with_timings(fast()).unwrap();
        let b = LeaderElector::new(api.clone(), "lock", "b").with_timings(fast()).unwrap();
        let (mut a_leads, mut b_leads) = (a.leading(), b.leading());
        let (stop_a, a_stopped) = stop_signal();
        let (stop_b, b_stopped) = stop_signal();
        let a_run = tokio::spawn(a.run(leaders.work(), a_stopped));
        until_leading(&mut a_leads, Duration::from_secs(5)).await;
        let b_run = tokio::spawn(b.run(leaders.work(), b_stopped));

        // Well past the lease duration: a keeps renewing, b keeps waiting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(*a_leads.borrow() && !*b_leads.borrow());
        let lease = api.get("lock").await.unwrap().spec.unwrap();
        assert_eq!(lease.holder_identity.as_deref(), Some("a"));
        assert_eq!(lease.lease_transitions, Some(0));

        // a shuts down and releases: b takes over without waiting for expiry.
        let _ = stop_a.send(());
        a_run.await.unwrap().unwrap();
        assert!(!*a_leads.borrow());
        until_leading(&mut b_leads, Duration::from_millis(1500)).await;
        let lease = api.get("lock").await.unwrap().spec.unwrap();
        assert_eq!(lease.holder_identity.as_deref(), Some("b"));
        assert_eq!(lease.lease_transitions, Some(1));

        let _ = stop_b.send(());
        b_run.await.unwrap().unwrap();
        let lease = api.get("lock").await.unwrap().spec.unwrap();
        assert_eq!(lease.holder_identity.as_deref(), Some(""));
        assert_eq!(leaders.max.load(Ordering::SeqCst), 1, "two leaders at once");
        assert_eq!(leaders.now.load(Ordering::SeqCst), 0, "leader work left running");
    }

    #[tokio::test]
    async fn racing_candidates_elect_exactly_one() {
        let server = FakeApiserver::start().await;
        let api = server.client.api::<Lease>("kube-system");
        let leaders = Leaders::default();
        let mut stops = Vec::new();
        let mut runs = Vec::new();
        for id in ["a", "b", "c"] {
            let e = LeaderElector::new(api.clone(), "race", id).with_timings(fast()).unwrap();
            let (stop, stopped) = stop_signal();
            stops.push(stop);
            runs.push(tokio::spawn(e.run(leaders.work(), stopped)));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(leaders.now.load(Ordering::SeqCst), 1);
        assert_eq!(leaders.max.load(Ordering::SeqCst), 1);
        for stop in stops {
            let _ = stop.send(());
        }
        for run in runs {
            run.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn steps_down_when_another_takes_the_lease() {
        let server = FakeApiserver::start().await;
        let api = server.client.api::<Lease>("kube-system");
        let leaders = Leaders::default();
        let a = LeaderElector::new(api.clone(), "lock", "a").with_timings(fast()).unwrap();
        let mut a_leads = a.leading();
        let (_stop, stopped) = stop_signal();
        let run = tokio::spawn(a.run(leaders.work(), stopped));
        until_leading(&mut a_leads, Duration::from_secs(5)).await;

        // Someone overwrites the lease (as after a long pause of ours).
        let mut lease = api.get("lock").await.unwrap();
        lease.spec = Some(acquired(lease.spec.as_ref(), "thief", Duration::from_secs(60), clock::now()));
        api.update(&lease).await.unwrap();

        let result = tokio::time::timeout(Duration::from_secs(2), run).await.expect("stepped down").unwrap();
        assert!(matches!(result, Err(Error::LeaseLost { ref holder, .. }) if holder == "thief"), "{result:?}");
        assert!(!*a_leads.borrow());
        assert_eq!(leaders.now.load(Ordering::SeqCst), 0, "leader work must stop");
    }

    #[tokio::test]
    async fn steps_down_when_renewal_keeps_failing() {
        let server = FakeApiserver::start().await;
        let api = server.client.api::<Lease>("kube-system");
        let leaders = Leaders::default();
        let a = LeaderElector::new(api.clone(), "lock", "a").with_timings(fast()).unwrap();
        let mut a_leads = a.leading();
        let (_stop, stopped) = stop_signal();
        let run = tokio::spawn(a.run(leaders.work(), stopped));
        until_leading(&mut a_leads, Duration::from_secs(5)).await;

        server.fake.set_unavailable(true);
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(3), run).await.expect("stepped down").unwrap();
        assert!(matches!(result, Err(Error::LeaseRenewTimedOut { .. })), "{result:?}");
        // Before the lease (2s) could have expired for anyone else.
        assert!(started.elapsed() < fast().lease_duration, "{:?}", started.elapsed());
        assert_eq!(leaders.now.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn finished_leader_work_releases_the_lease() {
        let server = FakeApiserver::start().await;
        let api = server.client.api::<Lease>("kube-system");
        let a = LeaderElector::new(api.clone(), "lock", "a").with_timings(fast()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), a.run(async {}, std::future::pending()))
            .await
            .expect("returns when the work is done");
        assert!(result.is_ok());
        let lease = api.get("lock").await.unwrap().spec.unwrap();
        assert_eq!(lease.holder_identity.as_deref(), Some(""));
        assert_eq!(lease.lease_duration_seconds, Some(1));
    }
}
