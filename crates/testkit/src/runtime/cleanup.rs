//! Tearing a containerd run down without leaving anything behind outside
//! its state dir: pods removed through CRI (so CNI releases addresses,
//! iptables chains and netns), then whatever a crash could have left — task
//! processes, shims, mounts, CNI result files, cgroups, the bridge, our
//! FORWARD rules. Each step touches only what this run created (ids it saw,
//! its own socket, its own bridge and CIDR) and is best effort: a failure is
//! logged and the next step still runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListContainersRequest, ListPodSandboxRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    StopPodSandboxRequest,
};

use super::containerd::CRI_NAMESPACE;
use super::cri_dial;
use crate::{Error, Result};

/// Stops and removes every pod sandbox and container through CRI. Returns
/// every id it saw (sandboxes and containers), for [`remove_leftovers`].
pub(super) async fn remove_all_pods(socket: &Path) -> Result<Vec<String>> {
    let mut cri = RuntimeServiceClient::new(cri_dial(socket));
    let cri_err = |what| move |source| Error::Cri { what, source };
    let sandboxes = cri
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .map_err(cri_err("listing pod sandboxes"))?
        .into_inner()
        .items;
    let containers = cri
        .list_containers(ListContainersRequest { filter: None })
        .await
        .map_err(cri_err("listing containers"))?
        .into_inner()
        .containers;
    let mut ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
    for s in &sandboxes {
        // Stop tears down the network (CNI DEL) and kills the containers;
        // remove deletes them and the sandbox.
        let id = s.id.clone();
        if let Err(e) = cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await {
            tracing::warn!(sandbox = %id, error = %e.message(), "stopping pod sandbox");
        }
        if let Err(e) = cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await {
            tracing::warn!(sandbox = %id, error = %e.message(), "removing pod sandbox");
        }
        ids.push(id);
    }
    // Containers whose sandbox was already gone.
    let left =
        cri.list_containers(ListContainersRequest { filter: None }).await.map_err(cri_err("listing containers"))?;
    for c in left.into_inner().containers {
        let _ = cri.remove_container(RemoveContainerRequest { container_id: c.id }).await;
    }
    Ok(ids)
}

/// Kills and deletes any task and container still in containerd's CRI
/// namespace (pods CRI could not remove), with `ctr`.
pub(super) fn kill_leftover_tasks(socket: &Path) {
    let ctr = |args: &[&str]| -> Option<String> {
        let mut all = vec!["-a", socket.to_str()?, "-n", CRI_NAMESPACE];
        all.extend_from_slice(args);
        let out = Command::new("ctr").args(&all).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for id in ctr(&["tasks", "ls", "-q"]).unwrap_or_default().split_whitespace() {
        tracing::warn!(task = id, "killing a task CRI left behind");
        ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        ctr(&["tasks", "rm", "-f", id]);
    }
    for id in ctr(&["containers", "ls", "-q"]).unwrap_or_default().split_whitespace() {
        ctr(&["containers", "rm", id]);
    }
}

/// SIGKILLs containerd shims still serving our containerd (their command
/// line names its socket): they outlive containerd by design.
pub(super) fn kill_shims(socket: &Path) {
    let Some(socket) = socket.to_str() else { return };
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let ours = args.windows(2).any(|w| w[0] == b"-address" && w[1] == socket.as_bytes());
        if is_shim && ours {
            tracing::warn!(pid, "killing a containerd shim left behind");
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// Lazily unmounts everything mounted under `dir` (rootfs overlays, netns
/// and shm mounts a crash left), deepest first, so the dir can be removed.
pub(super) fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).stderr(Stdio::null()).status();
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Removes what CNI and runc keep outside the state dir for the given ids
/// (normally gone already). The folders they sit in (`/run/containerd/s`,
/// `/var/lib/cni/results`, the `k8s.io` cgroup) stay even when empty: a
/// containerd of another test may be about to put something in them, and
/// removing one under it fails its next pod.
pub(super) fn remove_leftovers(ids: &[String]) {
    if let Ok(results) = std::fs::read_dir("/var/lib/cni/results") {
        for e in results.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for ctrl in controllers.flatten().map(|e| e.path()) {
            for id in ids {
                // rmdir only removes an empty cgroup: never one in use.
                let _ = std::fs::remove_dir(ctrl.join(CRI_NAMESPACE).join(id));
                let _ = std::fs::remove_dir(ctrl.join(id));
            }
        }
    }
}

/// Deletes network link `name` if it exists (the CNI bridge of this run).
pub(crate) fn delete_link(name: &str) {
    if !name.is_empty() && Path::new("/sys/class/net").join(name).exists() {
        let ok = Command::new("ip").args(["link", "del", name]).stderr(Stdio::null()).status();
        if !ok.is_ok_and(|s| s.success()) {
            tracing::warn!(link = name, "could not delete the CNI bridge");
        }
    }
}

/// ACCEPT rules at the top of the FORWARD chain for a pod CIDR, tagged with
/// a `skiff` comment. Docker's engine sets the FORWARD policy to DROP; its
/// own chains are never touched.
#[derive(Debug)]
pub(crate) struct ForwardRules {
    rules: Vec<Vec<String>>,
}

impl ForwardRules {
    /// Inserts the rules; `None` (logged) if iptables is missing or refuses.
    /// The rules for `pod_cidr` on `bridge`, without touching iptables.
    pub(crate) fn of(pod_cidr: &str, bridge: &str) -> Self {
        let comment = format!("skiff {bridge}");
        let rules = ["-s", "-d"]
            .iter()
            .map(|dir| {
                [*dir, pod_cidr, "-m", "comment", "--comment", &comment, "-j", "ACCEPT"].map(String::from).to_vec()
            })
            .collect();
        Self { rules }
    }

    pub(crate) fn add(pod_cidr: &str, bridge: &str) -> Option<Self> {
        let mut added = Self { rules: Vec::new() };
        for rule in Self::of(pod_cidr, bridge).rules {
            let ok = Command::new("iptables")
                .args(["-w", "-I", "FORWARD", "1"])
                .args(&rule)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                tracing::warn!(pod_cidr, "could not add a FORWARD ACCEPT rule: pod-to-pod traffic may be dropped");
                added.remove();
                return None;
            }
            added.rules.push(rule);
        }
        Some(added)
    }

    pub(crate) fn remove(self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").args(["-w", "-D", "FORWARD"]).args(rule).stderr(Stdio::null()).status();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
    }
}
