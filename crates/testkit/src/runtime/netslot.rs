//! Pod networks for runs side by side: each containerd a test starts gets
//! its own pod CIDR and CNI bridge (`10.42.N.0/24` on `skiffN`), claimed
//! with a file `/run/skiff/netslots/N` holding the claimant's pid. Two
//! bridges with the same subnet in one network namespace would fight over
//! the route, so parallel tests can't share one.
//!
//! A claim whose pid is gone is stale and taken over (with the bridge a
//! crashed run may have left, which the new owner then deletes).

use std::io::Write;
use std::path::PathBuf;

use crate::{Error, Result};

/// Slots for tests start here, clear of `skiffctl up`'s 10.42.0.0/24 and of
/// low node numbers.
const FIRST: u16 = 100;
const LAST: u16 = 254;

fn slot_dir() -> PathBuf {
    std::env::var_os("SKIFF_RUN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/skiff"))
        .join("netslots")
}

/// A claimed slot; the claim file goes on drop (unless kept for a detached run).
#[derive(Debug)]
pub(super) struct NetSlot {
    file: PathBuf,
    pub(super) pod_cidr: String,
    pub(super) bridge: String,
    keep: bool,
}

impl NetSlot {
    pub(super) fn claim() -> Result<Self> {
        let dir = slot_dir();
        std::fs::create_dir_all(&dir).map_err(super::io_err("creating", &dir))?;
        for n in FIRST..=LAST {
            let file = dir.join(n.to_string());
            if try_claim(&file) {
                return Ok(Self {
                    file,
                    pod_cidr: format!("10.42.{n}.0/24"),
                    bridge: format!("skiff{n}"),
                    keep: false,
                });
            }
        }
        Err(Error::Io {
            what: "claiming a pod network slot",
            path: dir.display().to_string(),
            source: std::io::Error::other("every slot is taken"),
        })
    }

    /// Hands the claim to `pid` (a detached containerd that outlives us).
    pub(super) fn hand_to(&mut self, pid: u32) {
        let _ = std::fs::write(&self.file, pid.to_string());
        self.keep = true;
    }
}

/// Frees the slot a detached containerd `pid` was handed, if any.
pub(super) fn release_held_by(pid: u32) {
    let Ok(entries) = std::fs::read_dir(slot_dir()) else { return };
    for e in entries.flatten() {
        if std::fs::read_to_string(e.path()).is_ok_and(|s| s.trim() == pid.to_string()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for NetSlot {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

fn try_claim(file: &PathBuf) -> bool {
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<u32>().ok());
                // An empty file is a claim being written right now: leave it.
                match holder {
                    Some(pid) if !crate::process::running(pid) => {
                        let _ = std::fs::remove_file(file);
                    }
                    _ => return false,
                }
            }
            Err(_) => return false,
        }
    }
    false
}
