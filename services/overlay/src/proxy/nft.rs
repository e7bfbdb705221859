//! Applying a script with `nft -f -`: nft sends the whole script to the
//! kernel as one netlink batch, so it takes effect entirely or not at all.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::Error;

/// Applies `script` in one transaction; nft's stderr on failure.
pub async fn apply(script: &str) -> Result<(), Error> {
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
