//! Expectations, after Kubernetes' `ControllerExpectations`: a controller
//! that creates or deletes children records what it asked for *before*
//! asking, and the informer counts it down as the children appear or go. Until
//! then the controller does not act on that key again, so a cache that has
//! not caught up with its own writes never makes it create duplicates.
//!
//! Creations are counted; deletions are tracked by child key, so the same
//! deletion seen twice (a deletionTimestamp, then the delete) counts once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Unmet expectations older than this are ignored: a watch event was lost
/// or a create silently failed, and waiting longer would stall the key.
pub const EXPECTATIONS_TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Default)]
pub struct Expectations {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Option<Duration>,
}

struct Entry {
    creations: i64,
    deletions: HashSet<String>,
    set_at: Instant,
}

impl Expectations {
    pub fn new() -> Self {
        Self { entries: Mutex::default(), ttl: Some(EXPECTATIONS_TTL) }
    }

    #[cfg(test)]
    fn with_ttl(ttl: Duration) -> Self {
        Self { entries: Mutex::default(), ttl: Some(ttl) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the controller may act on `key`: nothing is outstanding, or
    /// what is has waited past the TTL.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => {
                (e.creations <= 0 && e.deletions.is_empty()) || self.ttl.is_some_and(|ttl| e.set_at.elapsed() > ttl)
            }
        }
    }

    /// About to create `n` children of `key`.
    pub fn expect_creations(&self, key: &str, n: usize) {
        self.lock()
            .insert(key.to_string(), Entry { creations: n as i64, deletions: HashSet::new(), set_at: Instant::now() });
    }

    /// About to delete these children of `key`.
    pub fn expect_deletions(&self, key: &str, children: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_string(),
            Entry { creations: 0, deletions: children.into_iter().collect(), set_at: Instant::now() },
        );
    }

    /// A child of `key` appeared (or `n` creations will never happen).
    pub fn creations_observed(&self, key: &str, n: usize) {
        if let Some(e) = self.lock().get_mut(key) {
            e.creations -= n as i64;
        }
    }

    /// The child `child` of `key` is gone or going (or will not be deleted).
    pub fn deletion_observed(&self, key: &str, child: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletions.remove(child);
        }
    }

    /// `key` itself is gone.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_and_deletions_count_down() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creations_observed("ns/rs", 1);
        assert!(!e.satisfied("ns/rs"));
        e.creations_observed("ns/rs", 1);
        assert!(e.satisfied("ns/rs"));

        e.expect_deletions("ns/rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("ns/rs", "ns/a");
        e.deletion_observed("ns/rs", "ns/a");
        assert!(!e.satisfied("ns/rs"), "one deletion seen twice counts once");
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
        e.forget("ns/rs");
        e.creations_observed("ns/rs", 1);
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn stale_expectations_expire() {
        let e = Expectations::with_ttl(Duration::from_millis(10));
        e.expect_creations("k", 5);
        assert!(!e.satisfied("k"));
        std::thread::sleep(Duration::from_millis(20));
        assert!(e.satisfied("k"));
    }
}
