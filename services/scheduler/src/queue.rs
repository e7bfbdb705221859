//! The scheduling queue: pods waiting for a scheduling cycle, and pods
//! parked because no node fits them.
//!
//! Pending pods go to the active [`WorkQueue`] (deduplicated, with per-pod
//! back-off). A pod no node fits is parked instead of retried: only a
//! change that could make it fit (a node added or changed, a pod deleted)
//! moves the parked pods back, through their back-off, and a periodic flush
//! catches anything those events miss. That keeps an unschedulable pod from
//! spinning the scheduler, as kube-scheduler's unschedulablePods does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use skiff_client::{Backoff, WorkQueue};
use tokio::time::Instant;

/// kube-scheduler's podInitialBackoffSeconds / podMaxBackoffSeconds.
pub const POD_BACKOFF: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(10) };

/// Pending pod keys ("namespace/name") for the scheduling loop.
pub struct SchedulingQueue {
    active: WorkQueue<String>,
    parked: Mutex<Parked>,
}

#[derive(Default)]
struct Parked {
    /// Parked pods and when they were parked.
    pods: HashMap<String, Instant>,
    /// Counts move requests, so a cycle that started before one does not
    /// park its pod after it (the change it missed might make it fit).
    moves: u64,
}

/// A popped pod key, with the move count when its cycle began.
pub struct Popped {
    pub key: String,
    moves: u64,
}

impl SchedulingQueue {
    pub fn new(backoff: Backoff) -> Self {
        Self { active: WorkQueue::with_backoff(backoff), parked: Mutex::new(Parked::default()) }
    }

    /// Queues a pod now (new, or changed so it may fit now).
    pub fn add(&self, key: String) {
        self.lock().pods.remove(&key);
        self.active.add(key);
    }

    /// Drops a pod that no longer waits (bound, deleted, finished).
    pub fn remove(&self, key: &str) {
        self.lock().pods.remove(key);
        self.active.forget(&key.to_string());
    }

    pub fn is_parked(&self, key: &str) -> bool {
        self.lock().pods.contains_key(key)
    }

    /// The next pod to schedule; `None` once shut down.
    pub async fn pop(&self) -> Option<Popped> {
        let key = self.active.get().await?;
        let moves = self.lock().moves;
        Some(Popped { key, moves })
    }

    /// Ends the cycle for a popped pod.
    pub fn done(&self, popped: &Popped) {
        self.active.done(&popped.key);
    }

    /// Retries a pod after its back-off (a failed Bind or API error).
    pub fn requeue_backoff(&self, key: &str) {
        self.active.add_rate_limited(key.to_string());
    }

    /// The pod was placed: reset its back-off.
    pub fn forget(&self, key: &str) {
        self.active.forget(&key.to_string());
    }

    /// No node fits the pod: park it until something changes. If something
    /// changed while its cycle ran, retry it after its back-off instead.
    pub fn park_unschedulable(&self, popped: &Popped) {
        let mut parked = self.lock();
        if parked.moves != popped.moves {
            drop(parked);
            self.requeue_backoff(&popped.key);
        } else {
            parked.pods.insert(popped.key.clone(), Instant::now());
        }
    }

    /// Something changed that may let parked pods fit: retry them all,
    /// each after its back-off. Returns how many moved.
    pub fn move_all(&self) -> usize {
        let moved: Vec<String> = {
            let mut parked = self.lock();
            parked.moves += 1;
            parked.pods.drain().map(|(k, _)| k).collect()
        };
        for key in &moved {
            self.active.add_rate_limited(key.clone());
        }
        moved.len()
    }

    /// Retries pods parked for at least `age`: the backstop for changes
    /// the event handlers do not recognise as relevant.
    pub fn flush_parked_older_than(&self, age: Duration) -> usize {
        let now = Instant::now();
        let moved: Vec<String> = {
            let mut parked = self.lock();
            let old: Vec<String> =
                parked.pods.iter().filter(|(_, at)| now.duration_since(**at) >= age).map(|(k, _)| k.clone()).collect();
            for k in &old {
                parked.pods.remove(k);
            }
            old
        };
        for key in &moved {
            self.active.add(key.clone());
        }
        moved.len()
    }

    /// (ready to schedule, parked) counts, for the pending-pods gauge.
    pub fn lens(&self) -> (usize, usize) {
        (self.active.len(), self.lock().pods.len())
    }

    pub fn shutdown(&self) {
        self.active.shutdown();
    }

    fn lock(&self) -> MutexGuard<'_, Parked> {
        // Every critical section is a few map operations that cannot panic
        // half way, so a poisoned lock still guards consistent data.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> SchedulingQueue {
        SchedulingQueue::new(Backoff { base: Duration::from_millis(1), max: Duration::from_millis(5) })
    }

    #[tokio::test]
    async fn parked_pods_wait_for_a_move() {
        let q = fast();
        q.add("ns/a".into());
        let p = q.pop().await.unwrap();
        q.park_unschedulable(&p);
        q.done(&p);
        assert!(q.is_parked("ns/a"));
        assert_eq!(q.lens(), (0, 1));
        // Nothing comes out until a move.
        assert!(tokio::time::timeout(Duration::from_millis(50), q.pop()).await.is_err());
        assert_eq!(q.move_all(), 1);
        let p = tokio::time::timeout(Duration::from_secs(5), q.pop()).await.unwrap().unwrap();
        assert_eq!(p.key, "ns/a");
    }

    #[tokio::test]
    async fn a_move_during_the_cycle_requeues_instead_of_parking() {
        let q = fast();
        q.add("ns/a".into());
        let p = q.pop().await.unwrap();
        q.move_all();
        q.park_unschedulable(&p);
        q.done(&p);
        assert!(!q.is_parked("ns/a"));
        let p = tokio::time::timeout(Duration::from_secs(5), q.pop()).await.unwrap().unwrap();
        assert_eq!(p.key, "ns/a");
    }

    #[tokio::test]
    async fn flush_retries_only_old_parked_pods() {
        let q = fast();
        q.add("ns/a".into());
        let p = q.pop().await.unwrap();
        q.park_unschedulable(&p);
        q.done(&p);
        assert_eq!(q.flush_parked_older_than(Duration::from_secs(60)), 0);
        assert_eq!(q.flush_parked_older_than(Duration::ZERO), 1);
        assert_eq!(q.pop().await.unwrap().key, "ns/a");
    }
}
