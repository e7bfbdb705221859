//! Networks for runs side by side, claimed with a file
//! `/run/skiff/<pool>/N` holding the claimant's pid: each containerd a test
//! starts gets its own pod CIDR and CNI bridge (`10.42.N.0/24` on `skiffN`,
//! pool `netslots`), each multi-host LAN its own subnet and bridge (pool
//! `lanslots`, see [`crate::netns`]). Two bridges with the same subnet in
//! one network namespace would fight over the route, so parallel tests
//! can't share one.
//!
//! A claim whose pid is gone is stale and taken over (with the bridge a
//! crashed run may have left, which the new owner then deletes).

use std::io::Write;
use std::path::PathBuf;

use crate::{Error, Result};

/// Pod-network slots for tests start here, clear of `skiffctl up`'s
/// 10.42.0.0/24 and of low node numbers.
const POD_FIRST: u16 = 100;
const LAST: u16 = 254;

fn slot_dir(pool: &str) -> PathBuf {
    std::env::var_os("SKIFF_RUN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/skiff"))
        .join(pool)
}

/// A claimed slot; the claim file goes on drop (unless kept for a detached run).
#[derive(Debug)]
pub(crate) struct NetSlot {
    file: PathBuf,
    pub(crate) n: u16,
    pub(crate) pod_cidr: String,
    pub(crate) bridge: String,
    keep: bool,
}

impl NetSlot {
    /// A pod network: `10.42.N.0/24` on bridge `skiffN`.
    pub(crate) fn claim() -> Result<Self> {
        let mut slot = Self::claim_in("netslots", POD_FIRST)?;
        (slot.pod_cidr, slot.bridge) = (format!("10.42.{}.0/24", slot.n), format!("skiff{}", slot.n));
        Ok(slot)
    }

    /// Any free N from `first` to 254 in `pool`.
    pub(crate) fn claim_in(pool: &str, first: u16) -> Result<Self> {
        let dir = slot_dir(pool);
        std::fs::create_dir_all(&dir).map_err(super::io_err("creating", &dir))?;
        for n in first..=LAST {
            let file = dir.join(n.to_string());
            if try_claim(&file) {
                return Ok(Self { file, n, pod_cidr: String::new(), bridge: String::new(), keep: false });
            }
        }
        Err(Error::Io {
            what: "claiming a pod network slot",
            path: dir.display().to_string(),
            source: std::io::Error::other("every slot is taken"),
        })
    }

    /// Hands the claim to `pid` (a detached containerd that outlives us).
    pub(crate) fn hand_to(&mut self, pid: u32) {
        let _ = std::fs::write(&self.file, pid.to_string());
        self.keep = true;
    }
}

/// Frees slot `n` of `pool`.
pub(crate) fn release(pool: &str, n: u16) {
    let _ = std::fs::remove_file(slot_dir(pool).join(n.to_string()));
}

/// Frees the slot of `pool` that detached process `pid` was handed, if any.
pub(crate) fn release_held_by(pool: &str, pid: u32) {
    let Ok(entries) = std::fs::read_dir(slot_dir(pool)) else { return };
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
    // Taking over a stale claim is read, remove, create: two claimants doing
    // it at once could both win. The pool's lock file makes it one at a time
    // (flock excludes other threads' opens as well as other processes).
    let lock = file.with_file_name(".lock");
    let Ok(lock) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock) else {
        return false;
    };
    if lock.lock().is_err() {
        return false;
    }
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
            Ok(mut f) => {
                let _ = write!(f, "{}", std::process::id());
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<u32>().ok());
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
