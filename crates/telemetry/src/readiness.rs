//! The readiness flag that `/readyz` reports.

use std::sync::Arc;

use tokio::sync::watch;

/// A cheap, clonable handle on whether the process is ready for traffic.
///
/// Starts not ready ("starting"): a service flips it once its caches have
/// synced and its listeners are up, and back while it drains. A watch
/// channel rather than an atomic so the reason travels with the flag and
/// callers can [`wait_ready`](Readiness::wait_ready).
#[derive(Clone, Debug)]
pub struct Readiness {
    state: Arc<watch::Sender<State>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Ready,
    NotReady(String),
}

impl Readiness {
    /// A handle that reports not ready with the reason "starting".
    pub fn new() -> Self {
        let (state, _) = watch::channel(State::NotReady("starting".to_owned()));
        Self { state: Arc::new(state) }
    }

    /// Reports ready.
    pub fn set_ready(&self) {
        self.state.send_replace(State::Ready);
    }

    /// Reports not ready; `reason` becomes the body of the 503.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.state.send_replace(State::NotReady(reason.into()));
    }

    /// Whether the process currently reports ready.
    pub fn is_ready(&self) -> bool {
        *self.state.borrow() == State::Ready
    }

    /// `Ok(())` when ready, else the reason it is not.
    pub fn status(&self) -> Result<(), String> {
        match &*self.state.borrow() {
            State::Ready => Ok(()),
            State::NotReady(reason) => Err(reason.clone()),
        }
    }

    /// Resolves once the process reports ready (at once if it already does).
    pub async fn wait_ready(&self) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|s| *s == State::Ready).await;
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_flips() {
        let r = Readiness::new();
        assert!(!r.is_ready());
        assert_eq!(r.status(), Err("starting".to_owned()));

        let clone = r.clone();
        clone.set_ready();
        assert!(r.is_ready());
        assert_eq!(r.status(), Ok(()));

        r.set_not_ready("draining");
        assert!(!clone.is_ready());
        assert_eq!(clone.status(), Err("draining".to_owned()));
    }

    #[tokio::test]
    async fn wait_ready_resolves_after_set_ready() {
        let r = Readiness::new();
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        r.set_ready();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("wait_ready did not resolve")
            .expect("waiter task panicked");
    }
}
