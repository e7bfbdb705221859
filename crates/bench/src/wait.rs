//! Waiting on a condition with a deadline, or on a watch's next event, as
//! the scenarios do between their steps.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::Value;
use skiff_client::WatchEvent;

/// Polls `check` every 200 ms until it yields a value; fails naming `what`
/// after `timeout`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The next event of a watch: its error, or its end, fails the scenario
/// (waiting on would spin, or wait for events that can no longer come).
pub async fn next_event<S>(watch: &mut S) -> anyhow::Result<WatchEvent<Value>>
where
    S: Stream<Item = Result<WatchEvent<Value>, skiff_client::Error>> + Unpin,
{
    match watch.next().await {
        Some(Ok(event)) => Ok(event),
        Some(Err(e)) => Err(anyhow::Error::new(e).context("watching")),
        None => anyhow::bail!("the watch ended"),
    }
}
