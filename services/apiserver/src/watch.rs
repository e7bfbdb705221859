//! Serving one client watch: from the watch cache when it still holds the
//! events after the client's resourceVersion, else from etcd directly.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff_api::proto::{watch_event::Type as WireType, WatchEvent};
use skiff_api::KindInfo;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::cache::{decode_event, CacheEvent, EventType, Filter, Subscription, WatchCache};
use crate::storage::{Storage, Watched};
use crate::Error;

pub type Outbox = mpsc::Sender<Result<WatchEvent, Status>>;

/// Where a watch ends: client gone, server shutting down, or an error the
/// client must act on.
enum End {
    Closed,
    Failed(Error),
}

fn wire(kind: EventType, object: &crate::cache::CachedObject) -> WatchEvent {
    let ty = match kind {
        EventType::Added => WireType::Added,
        EventType::Modified => WireType::Modified,
        EventType::Deleted => WireType::Deleted,
    };
    WatchEvent { r#type: ty as i32, object: object.json.clone(), resource_version: object.revision.to_string() }
}

fn bookmark(revision: i64) -> WatchEvent {
    WatchEvent { r#type: WireType::Bookmark as i32, object: Default::default(), resource_version: revision.to_string() }
}

/// Tracks what one watcher has seen and sends what passes its filter.
struct Watcher {
    filter: Filter,
    out: Outbox,
    /// The last revision delivered or filtered out.
    seen: i64,
    /// The revision of the last event or bookmark actually sent.
    sent: i64,
}

impl Watcher {
    async fn deliver(&mut self, ev: &CacheEvent) -> Result<(), End> {
        if ev.revision <= self.seen {
            return Ok(());
        }
        self.seen = ev.revision;
        if let Some((kind, object)) = self.filter.view(ev) {
            self.out.send(Ok(wire(kind, &object))).await.map_err(|_| End::Closed)?;
            self.sent = ev.revision;
        }
        Ok(())
    }

    /// A filtered watcher may see nothing for a long time; a bookmark moves
    /// its resume point forward so a reconnect need not reach back into
    /// history etcd may have compacted.
    async fn bookmark(&mut self) -> Result<(), End> {
        if self.seen > self.sent {
            self.out.send(Ok(bookmark(self.seen))).await.map_err(|_| End::Closed)?;
            self.sent = self.seen;
        }
        Ok(())
    }

    async fn fail(self, end: End) {
        if let End::Failed(e) = end {
            let _ = self.out.send(Err(e.into())).await;
        }
    }
}

pub struct WatchParams {
    pub filter: Filter,
    /// Counts open watches for /metrics.
    pub watchers: skiff_telemetry::prometheus::IntGauge,
    pub from: i64,
    pub bookmark_interval: Duration,
}

/// Starts feeding `out` with the events after `params.from`.
pub fn spawn(
    cache: Arc<WatchCache>,
    storage: Arc<dyn Storage>,
    params: WatchParams,
    out: Outbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let watcher = Watcher { filter: params.filter, out, seen: params.from, sent: params.from };
    let watchers = params.watchers;
    watchers.inc();
    tokio::spawn(async move {
        let info = cache.info;
        let served = match cache.subscribe(params.from) {
            Some(sub) => from_cache(&cache, sub, watcher, params.bookmark_interval, &mut shutdown).await,
            None => from_etcd(info, storage.as_ref(), watcher, params.bookmark_interval, &mut shutdown).await,
        };
        if let Err((watcher, end)) = served {
            watcher.fail(end).await;
        }
        watchers.dec();
    });
}

type Served = Result<(), (Watcher, End)>;

async fn from_cache(
    cache: &WatchCache,
    sub: Subscription,
    mut w: Watcher,
    bookmark_every: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Served {
    let Subscription { replay, mut feed } = sub;
    for ev in &replay {
        if let Err(end) = w.deliver(ev).await {
            return Err((w, end));
        }
    }
    let mut ticker = tokio::time::interval(bookmark_every);
    ticker.tick().await;
    loop {
        let step = tokio::select! {
            ev = feed.recv() => match ev {
                Ok(ev) => w.deliver(&ev).await,
                // Fell behind the live feed: catch up from the history ring,
                // which is larger, and rejoin the feed where it stands now.
                Err(broadcast::error::RecvError::Lagged(_)) => match cache.subscribe(w.seen) {
                    Some(sub) => {
                        feed = sub.feed;
                        let mut r = Ok(());
                        for ev in &sub.replay {
                            r = w.deliver(ev).await;
                            if r.is_err() { break; }
                        }
                        r
                    }
                    None => Err(End::Failed(Error::Expired { requested: w.seen, compacted: cache.revision() })),
                },
                // The cache relisted: let the client resume from what it saw.
                Err(broadcast::error::RecvError::Closed) => Err(End::Failed(Error::WatchClosed)),
            },
            _ = ticker.tick() => w.bookmark().await,
            _ = w.out.closed() => Err(End::Closed),
            _ = shutdown.changed() => Err(End::Failed(Error::ShuttingDown)),
        };
        if let Err(end) = step {
            return Err((w, end));
        }
    }
}

/// A watch from before what the cache holds: its own etcd watch from the
/// client's revision, so nothing between is lost.
async fn from_etcd(
    info: &'static KindInfo,
    storage: &dyn Storage,
    mut w: Watcher,
    bookmark_every: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Served {
    let mut stream = match storage.watch(&w.filter.key_prefix, w.seen + 1).await {
        Ok(s) => s,
        Err(e) => return Err((w, End::Failed(e))),
    };
    let mut ticker = tokio::time::interval(bookmark_every);
    ticker.tick().await;
    loop {
        let step = tokio::select! {
            item = stream.next() => match item {
                Some(Ok(Watched::Compacted { revision })) => {
                    Err(End::Failed(Error::Expired { requested: w.seen, compacted: revision }))
                }
                Some(Ok(Watched::Changes(changes))) => {
                    let mut r = Ok(());
                    for ev in &changes {
                        match decode_event(info, ev) {
                            Ok(Some((kind, object, prev))) => {
                                let ev = CacheEvent {
                                    kind,
                                    revision: object.revision,
                                    object: Arc::new(object),
                                    prev: prev.map(Arc::new),
                                };
                                r = w.deliver(&ev).await;
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!(error = %e, "skipping an undecodable event"),
                        }
                        if r.is_err() { break; }
                    }
                    r
                }
                Some(Err(e)) => Err(End::Failed(e)),
                None => Err(End::Failed(Error::WatchClosed)),
            },
            _ = ticker.tick() => w.bookmark().await,
            _ = w.out.closed() => Err(End::Closed),
            _ = shutdown.changed() => Err(End::Failed(Error::ShuttingDown)),
        };
        if let Err(end) = step {
            return Err((w, end));
        }
    }
}
