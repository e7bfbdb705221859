//! "Something changed, rebuild from the caches": the trigger of loops that
//! recompute a whole view from informer stores (the overlay's nftables
//! rules and WireGuard peers, the DNS zone) instead of handling each event.
//!
//! Several informer feeds are merged into one wake-up that coalesces: any
//! number of events between two waits cost one rebuild, since the stores
//! already hold every change the events announced by the time they are
//! read. The wake-ups end only once every feed has closed, so one informer
//! stopping early does not freeze a view fed by the others.

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{InformerEvent, Object};

/// Merged, coalescing wake-ups from informer feeds. Build it with the
/// feeds before the informers run, so that no change is missed.
pub struct Changes {
    /// Cloned into each feed; dropped at the first wait, so that once the
    /// feeds have all closed, so has the channel.
    wake: Option<mpsc::Sender<()>>,
    woken: mpsc::Receiver<()>,
    /// One forwarding task per feed; dropped (and so aborted) with `self`.
    feeds: JoinSet<()>,
}

impl Default for Changes {
    fn default() -> Self {
        // One slot: a wake-up already pending absorbs the next ones.
        let (wake, woken) = mpsc::channel(1);
        Self { wake: Some(wake), woken, feeds: JoinSet::new() }
    }
}

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event of `feed` wakes.
    pub fn watch<K: Object>(self, feed: mpsc::UnboundedReceiver<InformerEvent<K>>) -> Self {
        self.watch_where(feed, |_| true)
    }

    /// Events of `feed` for which `matters` holds wake (a view that depends
    /// on one Node only, say).
    pub fn watch_where<K: Object>(
        mut self,
        mut feed: mpsc::UnboundedReceiver<InformerEvent<K>>,
        matters: impl Fn(&InformerEvent<K>) -> bool + Send + 'static,
    ) -> Self {
        // Feeds come before the first wait (the builder takes `self`).
        let Some(wake) = self.wake.clone() else { return self };
        self.feeds.spawn(async move {
            while let Some(event) = feed.recv().await {
                if matters(&event) {
                    // Full means a wake-up is pending already: nothing lost.
                    let _ = wake.try_send(());
                }
            }
        });
        self
    }

    /// Waits until something changed since the last call. False once every
    /// feed has closed (the informers stopped) and no wake-up is pending.
    pub async fn changed(&mut self) -> bool {
        self.wake = None;
        self.woken.recv().await.is_some()
    }

    /// [`changed`](Self::changed), unless `shutdown` comes first: the loop
    /// of a view that rebuilds until it is stopped or its informers are,
    /// `while changes.changed_before(&mut shutdown).await { rebuild() }`.
    pub async fn changed_before(&mut self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        tokio::select! {
            _ = shutdown => false,
            changed = self.changed() => changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Node};
    use std::sync::Arc;
    use std::time::Duration;

    fn named<K: Object + Default>(name: &str) -> InformerEvent<K> {
        let mut obj = K::default();
        obj.metadata_mut().name = Some(name.into());
        InformerEvent::Added(Arc::new(obj))
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_wakes_once() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut changes = Changes::new().watch::<ConfigMap>(rx);
        for i in 0..10 {
            tx.send(named(&format!("cm{i}"))).unwrap();
        }
        assert!(changes.changed().await);
        let again = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
        assert!(again.is_err(), "ten queued events must cost one wake-up");
        tx.send(named("later")).unwrap();
        assert!(changes.changed().await);
    }

    #[tokio::test(start_paused = true)]
    async fn filtered_events_do_not_wake() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut changes =
            Changes::new().watch_where::<Node>(rx, |e| e.object().metadata.name.as_deref() == Some("mine"));
        tx.send(named("other")).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
        assert!(woke.is_err(), "another node's event must not wake");
        tx.send(named("mine")).unwrap();
        assert!(changes.changed().await);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_only_when_every_feed_closed() {
        let (tx_a, rx_a) = mpsc::unbounded_channel::<InformerEvent<ConfigMap>>();
        let (tx_b, rx_b) = mpsc::unbounded_channel::<InformerEvent<Node>>();
        let mut changes = Changes::new().watch(rx_a).watch(rx_b);
        drop(tx_a);
        tx_b.send(named("n")).unwrap();
        assert!(changes.changed().await, "one closed feed must not end the others");
        drop(tx_b);
        assert!(!changes.changed().await);
    }

    #[tokio::test(start_paused = true)]
    async fn changed_before_ends_at_shutdown_and_otherwise_waits_for_a_change() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut changes = Changes::new().watch::<ConfigMap>(rx);
        tx.send(named("a")).unwrap();
        assert!(changes.changed_before(std::future::pending()).await);
        assert!(!changes.changed_before(std::future::ready(())).await, "shutdown first ends the loop");
        tx.send(named("b")).unwrap();
        assert!(changes.changed_before(tokio::time::sleep(Duration::from_secs(60))).await);
    }
}
