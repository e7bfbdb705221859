//! Where the scripts go: [`Nftables`] applies one as a transaction. The
//! real one is [`NftCommand`]: `nft -f -` sends the whole script to the
//! kernel as one netlink batch, so it takes effect entirely or not at all.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Error;

/// Applies nft scripts, each as one transaction.
#[async_trait::async_trait]
pub trait Nftables: Send + Sync + 'static {
    /// Applies `script` entirely or not at all; nft's complaint on failure.
    async fn apply(&self, script: &str) -> Result<(), Error>;
}

/// The `nft` binary on this host.
pub struct NftCommand;

#[async_trait::async_trait]
impl Nftables for NftCommand {
    async fn apply(&self, script: &str) -> Result<(), Error> {
        let io = |what| move |source| Error::Io { what, path: "nft -f -".into(), source };
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting"))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let write = stdin.write_all(script.as_bytes()).await;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(io("waiting for"))?;
        if out.status.success() {
            return Ok(());
        }
        write.map_err(io("writing the script to"))?;
        Err(Error::Nft { stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// An in-memory [`Nftables`] for unit tests: keeps every script that went
/// in, and refuses the next ones when a test says so. Clones share state.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct FakeNftables {
    state: std::sync::Arc<std::sync::Mutex<FakeState>>,
}

#[cfg(test)]
#[derive(Default)]
struct FakeState {
    applied: Vec<String>,
    /// Transactions still to refuse.
    failures: u32,
}

#[cfg(test)]
impl FakeNftables {
    /// Makes the next `n` transactions fail.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().unwrap().failures = n;
    }

    /// The scripts applied so far, oldest first (refused ones are not).
    pub fn applied(&self) -> Vec<String> {
        self.state.lock().unwrap().applied.clone()
    }
}

#[cfg(test)]
#[async_trait::async_trait]
impl Nftables for FakeNftables {
    async fn apply(&self, script: &str) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap();
        if st.failures > 0 {
            st.failures -= 1;
            return Err(Error::Nft { stderr: "Error: Could not process rule: injected by the test".into() });
        }
        st.applied.push(script.to_string());
        Ok(())
    }
}
