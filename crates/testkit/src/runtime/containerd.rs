//! containerd with its CRI plugin, runc and a CNI bridge, everything it
//! keeps (root, state, sockets, runc state, CNI config and IPAM) under
//! `<dir>/containerd` and `<dir>/cni`.
//!
//! The config follows what was seen to work on these machines: runc with
//! cgroupfs, `restrict_oom_score_adj` (no CAP_SYS_RESOURCE here), no
//! AppArmor, netns mounts under the state dir, the local registry as plain
//! HTTP and the sandbox image taken from it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cleanup::{self, ForwardRules};
use super::cri_dial;
use super::netslot::NetSlot;
use super::{io_err, Registry, PAUSE_IMAGE};
use crate::netns::Host;
use crate::{Error, Process, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// `POD_CIDR BRIDGE` of the run, under the state dir.
const NETWORK_FILE: &str = "cni/network";
/// The containerd namespace the CRI plugin always uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Pod network of one containerd. Leave both unset in tests: each run then
/// claims its own `10.42.N.0/24` and bridge `skiffN` (N from 100), so runs
/// side by side don't collide. Set both for a fixed node
/// (`skiffctl up`: [`super::DEFAULT_POD_CIDR`] on [`super::DEFAULT_BRIDGE`]).
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// The node's pod CIDR, e.g. `10.42.0.0/24`.
    pub pod_cidr: Option<String>,
    /// CNI bridge name (at most 15 characters).
    pub bridge: Option<String>,
    /// Run containerd (and so its pods) inside this host of a
    /// [`crate::netns::Lan`] rather than in the root namespace. Its CNI
    /// config is then the kubelet's to write (`--cni-conf-dir`
    /// [`Containerd::cni_conf_dir`]) from the podCIDR the controller-manager
    /// assigns; `pod_cidr` and `bridge` are ignored.
    pub host: Option<Host>,
}

pub struct Containerd {
    process: Option<Process>,
    dir: PathBuf,
    socket: PathBuf,
    pod_cidr: String,
    bridge: String,
    in_host: bool,
    detach: bool,
    forward: Option<ForwardRules>,
    // Dropped last: the slot is free only once the bridge is gone.
    _slot: Option<NetSlot>,
}

impl Containerd {
    /// Writes the config under `<dir>/containerd`, starts containerd and
    /// waits until its CRI service reports the runtime and network ready.
    pub async fn start(dir: &Path, registry: &Registry, options: &ContainerdOptions, detach: bool) -> Result<Self> {
        let (slot, pod_cidr, bridge) = match (&options.host, &options.pod_cidr, &options.bridge) {
            (Some(_), _, _) => (None, String::new(), String::new()),
            (None, Some(cidr), bridge) => {
                (None, cidr.clone(), bridge.clone().unwrap_or_else(|| super::DEFAULT_BRIDGE.into()))
            }
            (None, None, _) => {
                let slot = NetSlot::claim()?;
                let (cidr, bridge) = (slot.pod_cidr.clone(), slot.bridge.clone());
                (Some(slot), cidr, bridge)
            }
        };
        let root = dir.join("containerd");
        let cni = dir.join("cni");
        for d in [
            dir.join("logs"),
            dir.join("pids"),
            root.join("root"),
            root.join("state"),
            root.join("runc"),
            root.join("opt"),
            root.join("pod-logs"),
            cni.join("net.d"),
            cni.join("ipam"),
        ] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let socket = root.join("containerd.sock");
        write_config(&root, &cni, registry)?;
        if options.host.is_none() {
            write_conflist(&cni, &pod_cidr, &bridge)?;
        }
        let config = root.join("config.toml");
        let args = ["--config", &config.display().to_string()];
        let process = match &options.host {
            Some(host) => host.spawn("containerd", Path::new("containerd"), &args, dir, false, detach)?,
            None => {
                // Read back by `stop_detached`, which has no `Containerd` to
                // ask; a host's bridge goes with its namespace.
                let file = dir.join(NETWORK_FILE);
                std::fs::write(&file, format!("{pod_cidr} {bridge}\n")).map_err(io_err("writing", &file))?;
                Process::spawn("containerd", Path::new("containerd"), &args, dir, detach)?
            }
        };
        let in_host = options.host.is_some();
        let mut this = Self {
            process: Some(process),
            dir: dir.to_path_buf(),
            socket,
            pod_cidr,
            bridge,
            in_host,
            detach,
            forward: None,
            _slot: slot,
        };
        this.wait_ready().await?;
        // Docker's FORWARD policy DROP would drop pod-to-pod traffic across
        // the bridge (bridge netfilter): accept our own CIDR explicitly.
        if !in_host {
            this.forward = ForwardRules::add(&this.pod_cidr, &this.bridge);
        }
        if detach {
            let pid = this.pid();
            if let (Some(slot), Some(pid)) = (this._slot.as_mut(), pid) {
                slot.hand_to(pid);
            }
        }
        Ok(this)
    }

    /// Pulls from the registry `host` (`IP:PORT`) over plain HTTP too.
    pub fn trust_plain_http(&self, host: &str) -> Result<()> {
        write_plain_http_host(&self.dir.join("containerd"), host)
    }

    /// The CRI endpoint (a unix socket) the kubelet dials.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `unix:///…/containerd.sock`, as `--container-runtime-endpoint` wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The pod CIDR of its CNI config; empty for containerd in a host.
    pub fn pod_cidr(&self) -> &str {
        &self.pod_cidr
    }

    /// The CNI bridge pods are attached to (created with the first pod) in
    /// the root namespace; empty for containerd in a host.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The CNI config dir containerd reads (and reloads on change).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// host-local IPAM's dataDir for this containerd's pods.
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.dir.join("cni/ipam")
    }

    /// Folder for pod logs (`PodSandboxConfig.log_directory`).
    pub fn pod_log_dir(&self) -> PathBuf {
        self.dir.join("containerd/pod-logs")
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.process.as_ref().map(Process::log_path)
    }

    /// A gRPC channel to the CRI endpoint, for
    /// `cri::v1::runtime_service_client::RuntimeServiceClient::new(channel)`.
    pub fn cri_channel(&self) -> tonic::transport::Channel {
        cri_dial(&self.socket)
    }

    /// Stops and removes every pod sandbox (and so its containers, network
    /// and mounts) through CRI. Returns the sandbox ids removed.
    pub async fn remove_all_pods(&self) -> Result<Vec<String>> {
        cleanup::remove_all_pods(&self.socket).await
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let name = "containerd".to_string();
        let log_tail = || self.log_path().map(crate::process::log_tail).unwrap_or_default();
        loop {
            // In a host the network turns ready once the kubelet writes
            // the CNI config, after the node has a podCIDR.
            let last = match cri_ready(&self.socket, !self.in_host).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.process.as_ref().and_then(Process::exit_status) {
                return Err(Error::Exited { name, status, log_tail: log_tail() });
            }
            if Instant::now() > deadline {
                let log_tail = format!("{}\nlast CRI status: {last}", log_tail());
                return Err(Error::NotReady { name, timeout: READY_TIMEOUT, log_tail });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops containerd after removing its pods, and cleans what it and CNI
    /// left outside the state dir. What `Drop` does, callable early.
    pub fn stop(&mut self) {
        let Some(mut process) = self.process.take() else { return };
        let socket = self.socket.clone();
        // Drop may run inside an async runtime: do the CRI calls on a thread
        // with a runtime of its own.
        let ids = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            Some(rt.block_on(remove_pods_logged(&socket)))
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or_default();
        cleanup::kill_leftover_tasks(&self.socket);
        process.stop(Duration::from_secs(10));
        after_stop(&self.dir, &self.socket, &ids, &self.bridge, self.forward.take());
    }
}

/// Removes every pod through CRI, logging (not failing) on error or after
/// a minute. Returns the ids seen.
async fn remove_pods_logged(socket: &Path) -> Vec<String> {
    match tokio::time::timeout(Duration::from_secs(60), cleanup::remove_all_pods(socket)).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "removing pods before stopping containerd");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("removing pods before stopping containerd timed out");
            Vec::new()
        }
    }
}

/// Cleans up once containerd is gone: shims, mounts, CNI and cgroup
/// leftovers of `ids`, the bridge, the FORWARD rules.
fn after_stop(dir: &Path, socket: &Path, ids: &[String], bridge: &str, forward: Option<ForwardRules>) {
    cleanup::kill_shims(socket);
    cleanup::unmount_under(dir);
    cleanup::remove_leftovers(ids);
    cleanup::delete_link(bridge);
    if let Some(rules) = forward {
        rules.remove();
    }
}

/// Stops the containerd a detached run left under `dir` (see
/// [`super::stop_detached_runtime`]). False if `dir` has none.
pub(super) async fn stop_detached(dir: &Path) -> Result<bool> {
    let root = dir.join("containerd");
    if !root.join("config.toml").is_file() {
        return Ok(false);
    }
    let socket = root.join("containerd.sock");
    let ids = if socket.exists() { remove_pods_logged(&socket).await } else { Vec::new() };
    let network = std::fs::read_to_string(dir.join(NETWORK_FILE)).unwrap_or_default();
    let mut words = network.split_whitespace().map(str::to_string);
    let (cidr, bridge) = (words.next(), words.next());
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        cleanup::kill_leftover_tasks(&socket);
        let pid_file = dir.join("pids/containerd.pid");
        let pid = crate::process::pid_in_file(&pid_file);
        crate::process::stop_pid_file(&pid_file);
        let forward = cidr.as_deref().zip(bridge.as_deref()).map(|(c, b)| ForwardRules::of(c, b));
        after_stop(&dir, &socket, &ids, bridge.as_deref().unwrap_or(""), forward);
        if let Some(pid) = pid {
            super::netslot::release_held_by("netslots", pid);
        }
    })
    .await
    .map_err(|e| Error::Io {
        what: "cleaning up containerd",
        path: root.display().to_string(),
        source: e.into(),
    })?;
    Ok(true)
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if !self.detach {
            self.stop();
        }
    }
}

/// Ok once CRI `Status` reports RuntimeReady and NetworkReady.
async fn cri_ready(socket: &Path, need_network: bool) -> Result<(), String> {
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    if !socket.exists() {
        return Err("no socket yet".into());
    }
    let channel = cri_dial(socket);
    let status = RuntimeServiceClient::new(channel)
        .status(k8s_cri::v1::StatusRequest { verbose: false })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
    let not_ready: Vec<String> = conditions
        .iter()
        .filter(|c| !c.status && (need_network || c.r#type != "NetworkReady"))
        .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
        .collect();
    if conditions.is_empty() || !not_ready.is_empty() {
        return Err(format!("not ready: {}", not_ready.join("; ")));
    }
    Ok(())
}

fn write_config(root: &Path, cni: &Path, registry: &Registry) -> Result<()> {
    let r = root.display();
    let host = registry.host();
    let sandbox_image = registry.image(PAUSE_IMAGE);
    let config = format!(
        r#"version = 2
root = "{r}/root"
state = "{r}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{r}/containerd.sock"
[ttrpc]
  address = "{r}/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{r}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{r}/certs.d"
"#,
        cni = cni.display(),
    );
    let path = root.join("config.toml");
    std::fs::write(&path, config).map_err(io_err("writing", &path))?;

    write_plain_http_host(root, &host)
}

/// Tells containerd (which reads certs.d on each pull) that the registry
/// `host` (`IP:PORT`) speaks plain HTTP.
fn write_plain_http_host(root: &Path, host: &str) -> Result<()> {
    let certs = root.join("certs.d").join(host);
    std::fs::create_dir_all(&certs).map_err(io_err("creating", &certs))?;
    let hosts = format!(
        "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n"
    );
    let path = certs.join("hosts.toml");
    std::fs::write(&path, hosts).map_err(io_err("writing", &path))
}

/// A bridge with host-local IPAM on `pod_cidr`, masquerading what leaves it.
fn write_conflist(cni: &Path, pod_cidr: &str, bridge: &str) -> Result<()> {
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"skiff","plugins":[
 {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":true,"hairpinMode":true,
  "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{pod_cidr}"}}]],
          "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{ipam}"}}}},
 {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}
"#,
        ipam = cni.join("ipam").display(),
    );
    let path = cni.join("net.d/10-skiff.conflist");
    std::fs::write(&path, conflist).map_err(io_err("writing", &path))?;
    Ok(())
}
