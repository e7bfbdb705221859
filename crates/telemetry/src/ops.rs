//! What every skiff service runs beside its own work: the metrics registry,
//! the readiness flag, the HTTP endpoint serving both, and the stop flag its
//! tasks end on. Each service starts one [`ServiceOps`] and shuts it down
//! last, so all of them drain the same way.

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{serve_http, Error, Metrics, Readiness};

/// A flag raised once, when the service stops; every task holds a clone and
/// ends when it is raised.
#[derive(Clone, Debug)]
pub struct Stop {
    raised: watch::Sender<bool>,
}

impl Stop {
    pub fn new() -> Self {
        Self { raised: watch::Sender::new(false) }
    }

    /// Tells every task to stop.
    pub fn raise(&self) {
        self.raised.send_replace(true);
    }

    /// Resolves once the flag is raised: hand one to each task.
    pub fn raised(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.raised.subscribe();
        async move {
            // An error means every sender is gone: nobody can raise it any
            // more, which is as good as raised.
            let _ = rx.wait_for(|raised| *raised).await;
        }
    }

    /// The flag as a watch receiver, for tasks that select on it in a loop.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.raised.subscribe()
    }
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

/// The operational side of one service process.
pub struct ServiceOps {
    pub metrics: Metrics,
    /// Starts not ready; the service flips it once it can serve.
    pub readiness: Readiness,
    pub stop: Stop,
    addr: SocketAddr,
    http: JoinHandle<()>,
}

impl ServiceOps {
    /// Serves `/metrics`, `/healthz` and `/readyz` on `listen` (port 0 picks
    /// one; see [`addr`](Self::addr)) until [`shutdown`](Self::shutdown).
    pub async fn start(listen: SocketAddr) -> Result<Self, Error> {
        let (metrics, readiness, stop) = (Metrics::new(), Readiness::new(), Stop::new());
        let (addr, http) = serve_http(listen, metrics.registry().clone(), readiness.clone(), stop.raised()).await?;
        tracing::info!(metrics_addr = %addr, "serving metrics and health");
        Ok(Self { metrics, readiness, stop, addr, http })
    }

    /// Where the operational endpoints listen.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reports not ready, raises the stop flag and returns once the HTTP
    /// endpoint has answered its open requests. The service then waits for
    /// its own tasks, which the raised flag ends.
    pub async fn shutdown(self) {
        self.readiness.set_not_ready("shutting down");
        self.stop.raise();
        let _ = self.http.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raising_the_flag_ends_waiters_made_before_and_after() {
        let stop = Stop::new();
        let early = tokio::spawn(stop.raised());
        let mut rx = stop.receiver();
        assert!(!*rx.borrow_and_update());
        stop.clone().raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), early).await.unwrap().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), stop.raised()).await.unwrap();
        assert!(*rx.borrow());
    }

    #[tokio::test]
    async fn shutdown_reports_not_ready_and_ends_the_endpoint() {
        let ops = ServiceOps::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        ops.readiness.set_ready();
        let readiness = ops.readiness.clone();
        let stop = ops.stop.clone();
        let addr = ops.addr();
        assert_ne!(addr.port(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), ops.shutdown()).await.unwrap();
        assert_eq!(readiness.status(), Err("shutting down".to_string()));
        tokio::time::timeout(std::time::Duration::from_secs(5), stop.raised()).await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the endpoint stopped listening");
    }
}
