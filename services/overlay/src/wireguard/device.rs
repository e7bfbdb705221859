//! The WireGuard interface as the mesh drives it ([`WireGuard`]), and the
//! real one ([`Device`]): kernel WireGuard where the module exists, else
//! `wireguard-go` (userspace), which this process starts, watches and
//! restarts. Keys and peers are set through wireguard-control in one
//! update that replaces the peer list.

use std::path::PathBuf;
use std::time::Duration;

use wireguard_control::{Backend, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::peers::Peer;
use super::Mode;
use crate::Error;

/// How long wireguard-go may take to open its control socket.
const USERSPACE_START: Duration = Duration::from_secs(10);
/// WireGuard's usual keepalive: keeps NAT mappings and handshakes fresh.
const KEEPALIVE_SECONDS: u16 = 25;

/// A WireGuard interface: its key and peers, and the process behind it
/// when there is one.
#[async_trait::async_trait]
pub trait WireGuard: Send + Sync + 'static {
    /// `kernel` or `userspace`, for the info metric.
    fn mode(&self) -> &'static str;
    fn interface(&self) -> String;
    /// Whether the implementation died, taking the interface with it.
    fn gone(&mut self) -> bool;
    /// Resolves when the implementation dies; cancel-safe, so it can sit in
    /// a `select!` beside the event feed. Never, where nothing can die.
    async fn exited(&mut self);
    /// Starts it again after it died.
    async fn restart(&mut self) -> Result<(), Error>;
    /// Sets the key, the listen port and exactly these peers. `previous`,
    /// the peers set last time, lets the peers that stay keep their
    /// sessions: only those gone are removed. Without it (the first time,
    /// or after a restart) every peer is replaced.
    async fn configure(&self, key: &Key, port: u16, peers: &[Peer], previous: Option<&[Peer]>) -> Result<(), Error>;
}

pub struct Device {
    name: InterfaceName,
    backend: Backend,
    /// wireguard-go, when we started it (killed when the Device drops).
    userspace: Option<tokio::process::Child>,
}

fn wg_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::WireGuard { what: format!("{what}: {e}") }
}

impl Device {
    /// Creates interface `iface` with the implementation `mode` asks for.
    pub async fn create(mode: Mode, iface: &str) -> Result<Self, Error> {
        let name: InterfaceName =
            iface.parse().map_err(|e| Error::WireGuard { what: format!("interface name {iface:?}: {e}") })?;
        if matches!(mode, Mode::Auto | Mode::Kernel) {
            // Applying an empty update creates the kernel link if the module
            // is there; without it the kernel refuses the link kind.
            let created = DeviceUpdate::new().apply(&name, Backend::Kernel);
            match (created, mode) {
                (Ok(()), _) => {
                    tracing::info!(interface = iface, "using kernel WireGuard");
                    return Ok(Self { name, backend: Backend::Kernel, userspace: None });
                }
                (Err(e), Mode::Kernel) => return Err(wg_err("creating a kernel WireGuard interface")(e)),
                (Err(e), _) => tracing::info!(error = %e, "no kernel WireGuard here"),
            }
        }
        let userspace = start_userspace(iface).await?;
        tracing::info!(interface = iface, "using userspace WireGuard (wireguard-go)");
        Ok(Self { name, backend: Backend::Userspace, userspace })
    }
}

#[async_trait::async_trait]
impl WireGuard for Device {
    fn mode(&self) -> &'static str {
        match self.backend {
            Backend::Kernel => "kernel",
            _ => "userspace",
        }
    }

    fn interface(&self) -> String {
        self.name.to_string()
    }

    fn gone(&mut self) -> bool {
        match &mut self.userspace {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => {
                self.backend == Backend::Userspace
                    && std::os::unix::net::UnixStream::connect(socket(&self.name.to_string())).is_err()
            }
        }
    }

    /// The wireguard-go we started exits; never for kernel WireGuard or a
    /// reused wireguard-go (the periodic check covers those).
    async fn exited(&mut self) {
        match &mut self.userspace {
            Some(child) => {
                let _ = child.wait().await;
            }
            None => std::future::pending().await,
        }
    }

    async fn restart(&mut self) -> Result<(), Error> {
        tracing::warn!(interface = %self.name, "wireguard-go is gone: starting it again");
        // Forget the dead child first: if the start fails, `exited` must not
        // keep resolving (a busy loop); `gone` then sees the missing socket.
        self.userspace = None;
        self.userspace = start_userspace(&self.name.to_string()).await?;
        Ok(())
    }

    async fn configure(&self, key: &Key, port: u16, peers: &[Peer], previous: Option<&[Peer]>) -> Result<(), Error> {
        let mut update = DeviceUpdate::new().set_private_key(key.clone()).set_listen_port(port);
        // Replacing every peer would drop every session: the next packet to
        // a peer whose handshake then crosses its own reconfiguration waits
        // out WireGuard's 5 s handshake retry. Peers that stay are updated
        // in place.
        match previous {
            None => update = update.replace_peers(),
            Some(previous) => {
                for gone in previous.iter().filter(|p| !peers.iter().any(|n| n.public_key == p.public_key)) {
                    update = update.remove_peer_by_key(&gone.public_key);
                }
            }
        }
        for peer in peers {
            let base = peer.pod_cidr.nth(0).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            update = update.add_peer(
                PeerConfigBuilder::new(&peer.public_key)
                    .set_endpoint(peer.endpoint)
                    .replace_allowed_ips()
                    .add_allowed_ip(base.into(), peer.pod_cidr.prefix())
                    .set_persistent_keepalive_interval(KEEPALIVE_SECONDS),
            );
        }
        let (name, backend) = (self.name, self.backend);
        // The userspace backend talks over a blocking unix socket.
        tokio::task::spawn_blocking(move || update.apply(&name, backend))
            .await
            .map_err(|e| Error::WireGuard { what: format!("configuring the interface: {e}") })?
            .map_err(wg_err("configuring the interface"))
    }
}

/// wireguard-go's control socket for `iface` (the private /run/wireguard of
/// this host, where each host has its own).
fn socket(iface: &str) -> PathBuf {
    PathBuf::from("/run/wireguard").join(format!("{iface}.sock"))
}

/// Starts `wireguard-go -f IFACE` and waits for its control socket; reuses
/// one that already serves the interface (an earlier overlay's).
async fn start_userspace(iface: &str) -> Result<Option<tokio::process::Child>, Error> {
    let socket = socket(iface);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        tracing::info!(interface = iface, "reusing the running wireguard-go");
        return Ok(None);
    }
    let _ = std::fs::remove_file(&socket);
    std::fs::create_dir_all("/run/wireguard").map_err(wg_err("creating /run/wireguard"))?;
    let mut child = tokio::process::Command::new("wireguard-go")
        .args(["-f", iface])
        .env("LOG_LEVEL", "error")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(wg_err("starting wireguard-go"))?;
    let deadline = tokio::time::Instant::now() + USERSPACE_START;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::WireGuard { what: format!("wireguard-go {iface} exited at start ({status})") });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::WireGuard {
                what: format!("wireguard-go {iface} opened no control socket in {USERSPACE_START:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Some(child))
}
