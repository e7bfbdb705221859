//! Picking an endpoint for a request, and the passive health check that
//! takes failing endpoints out of rotation for a while.
//!
//! An endpoint's state (open requests, recent connect failures, ejection)
//! lives in [`Peers`], keyed by address, and outlives route-table rebuilds:
//! an Endpoints update must not forget that a pod just refused three
//! connections, nor reset least-connections counts mid-flight.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::settings::Balance;

/// Milliseconds on a monotonic clock local to this process.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint's live state.
#[derive(Debug, Default)]
pub struct PeerState {
    active: AtomicUsize,
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    ejected_until_ms: AtomicU64,
}

impl PeerState {
    fn ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }

    /// Counts a connect failure; ejects the endpoint for `fail_timeout` once
    /// `max_fails` happened within `fail_timeout`. Returns whether it was
    /// ejected by this failure.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = u64::try_from(fail_timeout.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.window_start_ms.load(Ordering::Relaxed)) > window {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1) >= max_fails {
            self.fails.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(now.saturating_add(window), Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn record_success(&self) {
        self.fails.store(0, Ordering::Relaxed);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Counts a request as open on an endpoint until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<PeerState>);

impl ActiveGuard {
    pub fn new(state: Arc<PeerState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every endpoint's state, shared by all route tables, and the round-robin
/// position of each set of endpoints, so that a rebuilt table (any Ingress,
/// Endpoints or Secret change) goes on where the old one was rather than
/// sending the next requests to the first endpoint again.
#[derive(Debug, Default)]
pub struct Peers {
    states: Mutex<HashMap<SocketAddr, Arc<PeerState>>>,
    cursors: Mutex<HashMap<Vec<SocketAddr>, Arc<AtomicUsize>>>,
}

impl Peers {
    pub fn state(&self, addr: SocketAddr) -> Arc<PeerState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.entry(addr).or_default().clone()
    }

    /// The round-robin position of the endpoint set `addrs` (sorted).
    fn cursor(&self, addrs: &[SocketAddr]) -> Arc<AtomicUsize> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        cursors.entry(addrs.to_vec()).or_default().clone()
    }

    /// Forgets endpoints and endpoint sets no route table holds any more.
    pub fn prune(&self) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.retain(|_, state| Arc::strong_count(state) > 1);
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        cursors.retain(|_, cursor| Arc::strong_count(cursor) > 1);
    }

    pub fn len(&self) -> usize {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ready endpoints of one Service port.
#[derive(Debug, Default)]
pub struct Endpoints {
    peers: Vec<(SocketAddr, Arc<PeerState>)>,
    cursor: Arc<AtomicUsize>,
}

impl Endpoints {
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>, peers: &Peers) -> Self {
        let mut addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        addrs.sort();
        addrs.dedup();
        let cursor = peers.cursor(&addrs);
        Self { peers: addrs.into_iter().map(|a| (a, peers.state(a))).collect(), cursor }
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().map(|(a, _)| *a)
    }

    /// Picks an endpoint not in `tried`, preferring ones not ejected (when
    /// all are ejected, nginx tries them anyway rather than fail outright).
    /// `hash_key` is the request's key when the policy hashes.
    pub fn pick(
        &self,
        balance: &Balance,
        hash_key: Option<&[u8]>,
        tried: &[SocketAddr],
    ) -> Option<(SocketAddr, Arc<PeerState>)> {
        let now = now_ms();
        let untried = || self.peers.iter().filter(|(a, _)| !tried.contains(a));
        let healthy: Vec<&(SocketAddr, Arc<PeerState>)> = untried().filter(|(_, s)| !s.ejected(now)).collect();
        let candidates = if healthy.is_empty() { untried().collect() } else { healthy };
        if candidates.is_empty() {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let chosen = match (balance, hash_key) {
            (Balance::Hash(_), Some(key)) => candidates.iter().copied().max_by_key(|(a, _)| rendezvous(key, a)),
            (Balance::LeastConn, _) => {
                // Rotating the start spreads ties instead of piling onto the first.
                let n = candidates.len();
                (0..n).map(|i| candidates[(start + i) % n]).min_by_key(|(_, s)| s.active())
            }
            _ => candidates.get(start % candidates.len()).copied(),
        };
        chosen.map(|(a, s)| (*a, s.clone()))
    }
}

/// Rendezvous (highest random weight) hashing: a key keeps its endpoint
/// while that endpoint stays, and only the keys of a removed one move.
fn rendezvous(key: &[u8], addr: &SocketAddr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    addr.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::HashKey;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|i| SocketAddr::from(([10, 0, 0, i as u8], 8080))).collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let peers = Peers::default();
        let eps = Endpoints::new(addrs(3), &peers);
        let mut counts = HashMap::new();
        for _ in 0..30 {
            let (a, _) = eps.pick(&Balance::RoundRobin, None, &[]).unwrap();
            *counts.entry(a).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 10), "{counts:?}");
    }

    #[test]
    fn a_rebuilt_table_goes_on_round_robin_where_the_old_one_was() {
        let peers = Peers::default();
        let old = Endpoints::new(addrs(2), &peers);
        let (first, _) = old.pick(&Balance::RoundRobin, None, &[]).unwrap();
        let rebuilt = Endpoints::new(addrs(2), &peers);
        drop(old);
        peers.prune();
        let (second, _) = rebuilt.pick(&Balance::RoundRobin, None, &[]).unwrap();
        assert_ne!(first, second, "the rebuilt table takes the other endpoint next");
        drop(rebuilt);
        peers.prune();
        assert!(peers.cursors.lock().unwrap().is_empty(), "unused positions are forgotten");
    }

    #[test]
    fn a_retry_never_picks_an_endpoint_already_tried() {
        let peers = Peers::default();
        let eps = Endpoints::new(addrs(2), &peers);
        let (first, _) = eps.pick(&Balance::RoundRobin, None, &[]).unwrap();
        for _ in 0..5 {
            let (second, _) = eps.pick(&Balance::RoundRobin, None, &[first]).unwrap();
            assert_ne!(first, second);
        }
        let all: Vec<SocketAddr> = eps.addrs().collect();
        assert!(eps.pick(&Balance::RoundRobin, None, &all).is_none());
    }

    #[test]
    fn least_conn_prefers_the_idle_endpoint() {
        let peers = Peers::default();
        let eps = Endpoints::new(addrs(2), &peers);
        let busy = peers.state(addrs(2)[0]);
        let _open = [ActiveGuard::new(busy.clone()), ActiveGuard::new(busy)];
        for _ in 0..4 {
            assert_eq!(eps.pick(&Balance::LeastConn, None, &[]).unwrap().0, addrs(2)[1]);
        }
    }

    #[test]
    fn hashing_keeps_a_key_on_its_endpoint_and_moves_only_a_removed_ones_keys() {
        let peers = Peers::default();
        let policy = Balance::Hash(HashKey::SourceIp);
        let three = Endpoints::new(addrs(3), &peers);
        let two = Endpoints::new(addrs(3).into_iter().take(2), &peers);
        for user in 0..50u32 {
            let key = user.to_be_bytes();
            let a = three.pick(&policy, Some(&key), &[]).unwrap().0;
            assert_eq!(a, three.pick(&policy, Some(&key), &[]).unwrap().0);
            if a != addrs(3)[2] {
                assert_eq!(a, two.pick(&policy, Some(&key), &[]).unwrap().0, "user {user} moved");
            }
        }
    }

    #[test]
    fn an_endpoint_failing_max_fails_times_is_skipped_until_fail_timeout() {
        let peers = Peers::default();
        let eps = Endpoints::new(addrs(2), &peers);
        let bad = peers.state(addrs(2)[0]);
        assert!(!bad.record_failure(2, Duration::from_secs(60)));
        assert!(bad.record_failure(2, Duration::from_secs(60)));
        for _ in 0..6 {
            assert_eq!(eps.pick(&Balance::RoundRobin, None, &[]).unwrap().0, addrs(2)[1]);
        }
        // With only ejected endpoints left, one is still tried.
        assert_eq!(eps.pick(&Balance::RoundRobin, None, &[addrs(2)[1]]).unwrap().0, addrs(2)[0]);

        let brief = peers.state(addrs(2)[1]);
        assert!(brief.record_failure(1, Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!brief.ejected(now_ms()), "ejection outlived fail_timeout");
    }

    #[test]
    fn prune_forgets_endpoints_no_table_holds() {
        let peers = Peers::default();
        let eps = Endpoints::new(addrs(3), &peers);
        assert_eq!(peers.len(), 3);
        drop(eps);
        let _kept = Endpoints::new(addrs(1), &peers);
        peers.prune();
        assert_eq!(peers.len(), 1);
    }
}
