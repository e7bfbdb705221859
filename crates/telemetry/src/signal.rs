//! The signal future that starts a service's drain.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on the first SIGINT or SIGTERM.
///
/// Registering a handler only fails without a Tokio runtime or when the
/// process is out of file descriptors. Rather than make every `main` handle
/// that, a failed registration is logged and that signal is simply not
/// waited for; if both fail this future never resolves and the process keeps
/// the default (terminating) behaviour for those signals.
pub async fn shutdown_signal() {
    let wait_for = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
                tracing::info!(signal = name, "shutdown signal received");
            }
            Err(error) => {
                tracing::error!(signal = name, %error, "cannot listen for signal");
                std::future::pending::<()>().await;
            }
        }
    };

    tokio::select! {
        () = wait_for(SignalKind::interrupt(), "SIGINT") => {}
        () = wait_for(SignalKind::terminate(), "SIGTERM") => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn resolves_on_sigterm() {
        let signal = shutdown_signal();
        tokio::pin!(signal);
        // The first poll registers both handlers; from then on SIGTERM no
        // longer terminates the test process but wakes the future instead.
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut signal).await.is_err());

        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());

        tokio::time::timeout(Duration::from_secs(10), signal)
            .await
            .expect("shutdown_signal did not resolve on SIGTERM");
    }
}
