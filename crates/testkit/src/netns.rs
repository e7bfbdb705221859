//! Hosts on one machine: network namespaces joined by a bridge, as
//! ../shared/notes/multihost.md found to work here.
//!
//! A [`Lan`] is a bridge `sklanN` in the root namespace holding
//! `172.31.N.1/24` (N claimed per run, so runs side by side don't collide);
//! each [`Host`] is a network namespace `skiffN-NAME` with a veth on that
//! bridge, `172.31.N.(10+i)/24`, a default route via the bridge and IP
//! forwarding on. Processes run inside a host through `nsenter --net`
//! (never `ip netns exec`, which remounts /sys and hides the cgroup mount
//! from runc). Dropping the `Lan` removes the namespaces, the bridge and
//! its FORWARD rules; processes are the caller's to stop first.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::runtime::cleanup::{delete_link, ForwardRules};
use crate::runtime::netslot::NetSlot;
use crate::{Error, Process, Result};

/// LAN slots; 172.31.N.0/24 for N in 1..=254.
const POOL: &str = "lanslots";

pub struct Lan {
    slot: NetSlot,
    bridge: String,
    hosts: Vec<Host>,
    forward: Option<ForwardRules>,
    detach: bool,
}

/// One host of a [`Lan`]: cheap to clone, valid while the `Lan` lives.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

impl Lan {
    /// Claims a slot and creates the bridge with the gateway address.
    pub fn create() -> Result<Self> {
        let slot = NetSlot::claim_in(POOL, 1)?;
        let bridge = format!("sklan{}", slot.n);
        // A crashed run may have left the bridge of the slot it held.
        delete_link(&bridge);
        let gateway = format!("{}/24", Ipv4Addr::new(172, 31, slot.n as u8, 1));
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let mut lan = Self { slot, bridge, hosts: Vec::new(), forward: None, detach: false };
        ip(&["addr", "add", &gateway, "dev", &lan.bridge])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        // Host-to-host frames cross the root namespace's FORWARD chain
        // (bridge netfilter), where Docker's policy is DROP.
        lan.forward = ForwardRules::add(&lan.subnet(), &lan.bridge);
        Ok(lan)
    }

    /// The root namespace's address on the LAN: where the control plane,
    /// the registry and cluster DNS listen for every host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.slot.n as u8, 1)
    }

    /// `172.31.N.0/24`.
    pub fn subnet(&self) -> String {
        format!("172.31.{}.0/24", self.slot.n)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds host `name` (letters, digits and `-`, at most 8 characters).
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        let index = self.hosts.len() + 1;
        let n = self.slot.n;
        let host = Host {
            name: name.to_string(),
            netns: format!("skiff{n}-{name}"),
            ip: Ipv4Addr::new(172, 31, n as u8, 10 + index as u8),
        };
        let _ = quiet("ip", &["netns", "del", &host.netns]);
        ip(&["netns", "add", &host.netns])?;
        self.hosts.push(host.clone());
        let veth = format!("vsk{n}h{index}");
        delete_link(&veth);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &host.netns])?;
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        let ns = host.netns.as_str();
        ip(&["-n", ns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &self.gateway().to_string()])?;
        // Set explicitly: the CNI plugin only sets it with a host's first pod.
        host.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(host)
    }

    /// Leaves the namespaces and the bridge in place when dropped (for
    /// `skiffctl up --nodes`), with the slot handed to `pid`; returns the
    /// slot's number for [`remove_detached`].
    pub fn detach(&mut self, pid: u32) -> u16 {
        self.detach = true;
        self.slot.hand_to(pid);
        self.slot.n
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if self.detach {
            return;
        }
        for host in &self.hosts {
            delete_netns(&host.netns);
        }
        delete_link(&self.bridge);
        if let Some(rules) = self.forward.take() {
            rules.remove();
        }
    }
}

/// Removes what detached [`Lan`] number `n` left: its namespaces
/// `skiffN-*`, bridge `sklanN`, FORWARD rules and slot.
pub fn remove_detached(n: u16) {
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        let prefix = format!("skiff{n}-");
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                delete_netns(&name);
            }
        }
    }
    let bridge = format!("sklan{n}");
    delete_link(&bridge);
    ForwardRules::of(&format!("172.31.{n}.0/24"), &bridge).remove();
    crate::runtime::netslot::release(POOL, n);
}

impl Host {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The namespace's name under /run/netns.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// `program` to be run inside this host's network namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path().display())).arg(program);
        cmd
    }

    /// Runs `program args…` in this host to completion; fails with its
    /// stderr unless it exits 0.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        checked(cmd, &format!("in host {}", self.name))
    }

    /// Starts `program args…` in this host as [`Process`] `name` (log and
    /// pid under `dir`). With `private_run` it gets a mount namespace of
    /// its own with a tmpfs on /run/wireguard: wireguard-go's control
    /// socket has one path for every namespace, so each host needs its own.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        dir: &Path,
        private_run: bool,
        detach: bool,
    ) -> Result<Process> {
        self.spawn_with_env(name, program, args, &[], dir, private_run, detach)
    }

    /// [`spawn`](Self::spawn) with `env` added to the inherited environment.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with_env(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        dir: &Path,
        private_run: bool,
        detach: bool,
    ) -> Result<Process> {
        let net = format!("--net={}", self.netns_path().display());
        let program = program.to_string_lossy();
        let mut all: Vec<&str> = vec![&net];
        if private_run {
            std::fs::create_dir_all("/run/wireguard")
                .map_err(crate::runtime::io_err("creating", "/run/wireguard".as_ref()))?;
            // nsenter, unshare and sh all exec: the pid is the program's.
            all.extend([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs -o size=1m skiff-run /run/wireguard && exec \"$@\"",
                "sh",
            ]);
        }
        all.push(&program);
        all.extend_from_slice(args);
        Process::spawn_with_env(name, Path::new("nsenter"), &all, env, dir, detach)
    }
}

/// Kills whatever still runs in namespace `name` (a process a crashed parent
/// left, such as wireguard-go), then deletes it.
fn delete_netns(name: &str) {
    if let Ok(out) = quiet("ip", &["netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
    }
    let _ = quiet("ip", &["netns", "del", name]);
}

fn ip(args: &[&str]) -> Result<()> {
    quiet("ip", args).map(drop)
}

/// Runs a setup command, failing with its stderr.
fn quiet(program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    checked(cmd, "setting up the test network")
}

/// Runs `cmd` to completion; fails with its stderr unless it exits 0.
fn checked(mut cmd: Command, what: &str) -> Result<Output> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let output = cmd.stdin(Stdio::null()).output().map_err(|source| Error::Spawn { name: shown.clone(), source })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            what: what.into(),
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
