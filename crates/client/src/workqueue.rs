//! The work queue every controller loop pulls keys from, after client-go's
//! rate-limiting work queue.
//!
//! - A key is queued at most once: adding a queued key again does nothing, so
//!   a burst of events for one object costs one reconcile.
//! - A key handed out by [`WorkQueue::get`] is never handed out again until
//!   [`WorkQueue::done`]; one added meanwhile is queued again by `done`, so the
//!   change that came in during the reconcile is not lost and two workers
//!   never reconcile the same object at once.
//! - [`WorkQueue::add_rate_limited`] retries a failing key with per-key
//!   exponential back-off; [`WorkQueue::forget`] resets it after a success.
//! - [`WorkQueue::add_after`] delays a key. Delayed keys need no timer task:
//!   whoever waits in `get` sleeps until the earliest one is due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Backoff;

/// A deduplicating queue of keys, shared by the handlers that add keys and
/// the workers that process them. Cheap to clone.
pub struct WorkQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes a worker in `get` when a key becomes ready, a sooner delayed key
    /// arrives, or the queue shuts down.
    notify: Notify,
    backoff: Backoff,
}

struct State<T> {
    /// Ready keys, in order.
    queue: VecDeque<T>,
    /// Keys that need processing: those in `queue`, and those processing now
    /// that were added again (they go back to `queue` on `done`).
    dirty: HashSet<T>,
    processing: HashSet<T>,
    /// Delayed keys by due time. A key may have stale entries here after its
    /// due time was moved earlier; `delayed` holds the one that counts.
    timers: BinaryHeap<Reverse<Timer<T>>>,
    delayed: HashMap<T, Instant>,
    /// Tie-breaker so that keys due at the same instant leave in the order
    /// they were added, and so `Timer` needs no `Ord` on `T`.
    timer_seq: u64,
    failures: HashMap<T, u32>,
    shutting_down: bool,
}

struct Timer<T> {
    at: Instant,
    seq: u64,
    key: T,
}

impl<T> PartialEq for Timer<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Timer<T> {}
impl<T> PartialOrd for Timer<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Timer<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

// === impl WorkQueue ===

impl<T: Hash + Eq + Clone> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone> WorkQueue<T> {
    pub fn new() -> Self {
        Self::with_backoff(Backoff::default())
    }

    pub fn with_backoff(backoff: Backoff) -> Self {
        let state = State {
            queue: VecDeque::new(),
            dirty: HashSet::new(),
            processing: HashSet::new(),
            timers: BinaryHeap::new(),
            delayed: HashMap::new(),
            timer_seq: 0,
            failures: HashMap::new(),
            shutting_down: false,
        };
        Self { inner: Arc::new(Inner { state: Mutex::new(state), notify: Notify::new(), backoff }) }
    }

    /// Queues `key` unless it is queued already. A key being processed is
    /// queued again once its worker calls [`done`](Self::done). Ignored after
    /// shutdown.
    pub fn add(&self, key: T) {
        let ready = self.lock().add(key);
        if ready {
            self.inner.notify.notify_one();
        }
    }

    /// Queues `key` once `delay` has passed. If the key is already waiting,
    /// the sooner of the two times wins.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let sooner = {
            let mut st = self.lock();
            if st.shutting_down {
                return;
            }
            st.add_timer(key, at)
        };
        if sooner {
            // A worker may be asleep until a later timer: wake one so it
            // sleeps until this one instead.
            self.inner.notify.notify_one();
        }
    }

    /// Queues `key` after its back-off, and lengthens the back-off for the
    /// next time. Use it when processing `key` failed.
    pub fn add_rate_limited(&self, key: T) {
        let delay = {
            let mut st = self.lock();
            let failures = st.failures.entry(key.clone()).or_insert(0);
            let delay = self.inner.backoff.delay(*failures);
            *failures = failures.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
    }

    /// Resets the back-off of `key`: call it when processing succeeded.
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// How many times in a row `key` was retried through
    /// [`add_rate_limited`](Self::add_rate_limited).
    pub fn num_requeues(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process, waiting for one if none is ready; `None`
    /// once the queue shuts down. The caller owns the key until it calls
    /// [`done`](Self::done).
    pub async fn get(&self) -> Option<T> {
        loop {
            // Registered before looking at the state, so that a notification
            // sent between the look and the wait is not lost.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let next_timer = {
                let mut st = self.lock();
                if st.shutting_down {
                    return None;
                }
                st.promote_due(Instant::now());
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    let more = !st.queue.is_empty();
                    drop(st);
                    if more {
                        // Keys promoted from timers at once woke nobody: pass
                        // the turn on so idle workers take them.
                        self.inner.notify.notify_one();
                    }
                    return Some(key);
                }
                st.next_timer()
            };
            match next_timer {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` processed. If it was added while processing, it is
    /// queued again now.
    pub fn done(&self, key: &T) {
        let requeued = {
            let mut st = self.lock();
            st.processing.remove(key);
            if st.dirty.contains(key) && !st.shutting_down {
                st.queue.push_back(key.clone());
                true
            } else {
                false
            }
        };
        if requeued {
            self.inner.notify.notify_one();
        }
    }

    /// Keys ready to be handed out (not counting delayed or in-flight ones).
    pub fn len(&self) -> usize {
        let mut st = self.lock();
        st.promote_due(Instant::now());
        st.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the queue: `get` returns `None` from now on (waiting workers wake
    /// at once), adds are ignored, and queued and delayed keys are dropped.
    /// Workers finish the key they hold; the level-triggered design means a
    /// dropped key is picked up again from the informer on the next start.
    pub fn shutdown(&self) {
        {
            let mut st = self.lock();
            st.shutting_down = true;
            st.queue.clear();
            st.dirty.clear();
            st.timers.clear();
            st.delayed.clear();
        }
        self.inner.notify.notify_waiters();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code path panics while holding the lock with the state half
        // changed, so a poisoned lock still guards consistent data.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl State ===

impl<T: Hash + Eq + Clone> State<T> {
    /// Returns whether the key went into the ready queue.
    fn add(&mut self, key: T) -> bool {
        if self.shutting_down || self.dirty.contains(&key) {
            return false;
        }
        self.dirty.insert(key.clone());
        if self.processing.contains(&key) {
            return false;
        }
        self.queue.push_back(key);
        true
    }

    /// Returns whether this made the key due sooner than before.
    fn add_timer(&mut self, key: T, at: Instant) -> bool {
        if let Some(&existing) = self.delayed.get(&key) {
            if existing <= at {
                return false;
            }
        }
        self.delayed.insert(key.clone(), at);
        self.timer_seq += 1;
        self.timers.push(Reverse(Timer { at, seq: self.timer_seq, key }));
        true
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse(timer)) = self.timers.peek() {
            if timer.at > now {
                break;
            }
            let Some(Reverse(timer)) = self.timers.pop() else { break };
            // Skip entries superseded by a sooner add_after of the same key.
            if self.delayed.get(&timer.key) == Some(&timer.at) {
                self.delayed.remove(&timer.key);
                self.add(timer.key);
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<String> {
        WorkQueue::new()
    }

    /// `get` when something is expected to be ready right now.
    async fn next(q: &WorkQueue<String>) -> String {
        tokio::time::timeout(Duration::from_millis(1), q.get())
            .await
            .expect("a key should be ready")
            .expect("queue should be running")
    }

    /// Whether `get` would hand out a key within `within`.
    async fn nothing_within(q: &WorkQueue<String>, within: Duration) -> bool {
        tokio::time::timeout(within, q.get()).await.is_err()
    }

    #[tokio::test(start_paused = true)]
    async fn dedups_queued_keys() {
        let q = queue();
        q.add("a".to_string());
        q.add("b".to_string());
        q.add("a".to_string());
        assert_eq!(q.len(), 2);
        assert_eq!(next(&q).await, "a");
        assert_eq!(next(&q).await, "b");
        assert!(nothing_within(&q, Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn never_hands_out_a_key_in_flight() {
        let q = queue();
        q.add("a".to_string());
        let key = next(&q).await;
        // Re-added while processing: not handed to a second worker.
        q.add("a".to_string());
        assert_eq!(q.len(), 0);
        assert!(nothing_within(&q, Duration::from_secs(1)).await);
        // Once done, the change that came in meanwhile is processed.
        q.done(&key);
        assert_eq!(q.len(), 1);
        assert_eq!(next(&q).await, "a");
        q.done(&"a".to_string());
        assert!(nothing_within(&q, Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn done_without_readd_does_not_requeue() {
        let q = queue();
        q.add("a".to_string());
        let key = next(&q).await;
        q.done(&key);
        assert_eq!(q.len(), 0);
        q.add("a".to_string());
        assert_eq!(next(&q).await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_workers_never_share_a_key() {
        let q = queue();
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let processed = Arc::new(Mutex::new(0usize));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (q, in_flight, processed) = (q.clone(), in_flight.clone(), processed.clone());
            workers.spawn(async move {
                while let Some(key) = q.get().await {
                    assert!(in_flight.lock().unwrap().insert(key.clone()), "{key} handed out twice at once");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    in_flight.lock().unwrap().remove(&key);
                    *processed.lock().unwrap() += 1;
                    q.done(&key);
                }
            });
        }
        for round in 0..20 {
            for k in 0..3 {
                q.add(format!("k{k}"));
            }
            tokio::time::sleep(Duration::from_millis(3 + round % 7)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.shutdown();
        while let Some(res) = workers.join_next().await {
            res.expect("worker panicked");
        }
        // Adds were deduplicated, but every key was processed at least once
        // after its last add.
        let processed = *processed.lock().unwrap();
        assert!((3..60).contains(&processed), "processed {processed}");
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_waits_and_takes_the_sooner_time() {
        let q = queue();
        q.add_after("a".to_string(), Duration::from_secs(10));
        assert_eq!(q.len(), 0);
        assert!(nothing_within(&q, Duration::from_secs(5)).await);
        // Sooner time wins over the pending later one.
        q.add_after("a".to_string(), Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(q.get().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        q.done(&"a".to_string());
        // The superseded timer does not fire the key a second time.
        assert!(nothing_within(&q, Duration::from_secs(20)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn later_add_after_does_not_postpone() {
        let q = queue();
        q.add_after("a".to_string(), Duration::from_secs(1));
        q.add_after("a".to_string(), Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(q.get().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_wakes_a_worker_already_waiting() {
        let q = queue();
        let worker = tokio::spawn({
            let q = q.clone();
            async move {
                let start = Instant::now();
                let key = q.get().await;
                (key, start.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.add_after("a".to_string(), Duration::from_millis(400));
        let (key, waited) = worker.await.unwrap();
        assert_eq!(key.as_deref(), Some("a"));
        assert_eq!(waited, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_due_together_reach_all_idle_workers() {
        let q = queue();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let q = q.clone();
            workers.spawn(async move {
                let key = q.get().await;
                // Hold the key so the other must come from a second worker.
                tokio::time::sleep(Duration::from_secs(100)).await;
                key
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        q.add_after("a".to_string(), Duration::from_secs(1));
        q.add_after("b".to_string(), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(q.len(), 0, "both keys should be taken by the two idle workers");
        let mut got = Vec::new();
        while let Some(res) = workers.join_next().await {
            got.push(res.unwrap().unwrap());
        }
        got.sort();
        assert_eq!(got, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_backoff_grows_and_forget_resets() {
        let q = WorkQueue::with_backoff(Backoff { base: Duration::from_millis(5), max: Duration::from_millis(100) });
        let key = "a".to_string();
        let mut waits = Vec::new();
        for _ in 0..7 {
            q.add_rate_limited(key.clone());
            let start = Instant::now();
            assert_eq!(q.get().await.as_deref(), Some("a"));
            waits.push(start.elapsed().as_millis());
            q.done(&key);
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 100, 100]);
        assert_eq!(q.num_requeues(&key), 7);

        q.forget(&key);
        assert_eq!(q.num_requeues(&key), 0);
        q.add_rate_limited(key.clone());
        let start = Instant::now();
        assert_eq!(q.get().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_per_key() {
        let q = queue();
        for _ in 0..3 {
            q.add_rate_limited("a".to_string());
        }
        q.add_rate_limited("b".to_string());
        assert_eq!(q.num_requeues(&"a".to_string()), 3);
        assert_eq!(q.num_requeues(&"b".to_string()), 1);
        assert_eq!(q.num_requeues(&"c".to_string()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_waiting_workers_and_ignores_adds() {
        let q = queue();
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.add_after("later".to_string(), Duration::from_secs(1));
        q.shutdown();
        assert_eq!(worker.await.unwrap(), None);
        q.add("a".to_string());
        assert_eq!(q.len(), 0);
        assert_eq!(q.get().await, None);
        assert!(q.is_shutting_down());
    }
}
