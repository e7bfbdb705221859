//! The container runtime side of a test node: a local OCI registry holding
//! test images the harness builds itself, and containerd (CRI plugin, runc,
//! CNI bridge) configured to pull from it. Nothing is pulled from the
//! internet.
//!
//! - [`Registry`]: Debian's `docker-registry` on 127.0.0.1.
//! - [`ensure_test_images`]: builds `busybox:latest`, `pause:3.6` and
//!   `testserver:latest` once (cached on disk) and pushes them.
//! - [`Containerd`]: containerd with its config, state, sockets and CNI
//!   config under the state dir; [`Containerd::socket_path`] is the CRI
//!   endpoint. Dropping it removes the pods it ran and what containerd and
//!   CNI leave outside the state dir.
//! - [`Runtime`]: all three together, as [`crate::Cluster`] starts them
//!   for [`crate::ClusterOptions::runtime`].
//!
//! Needs root and the Debian packages `containerd runc
//! containernetworking-plugins docker-registry skopeo umoci busybox-static`
//! (`scripts/install-deps`).

pub(crate) mod cleanup;
mod containerd;
mod images;
pub(crate) mod netslot;
mod registry;

use std::path::Path;

pub use containerd::{Containerd, ContainerdOptions, CRI_NAMESPACE};
pub use images::{ensure_test_images, image_cache_dir, BUSYBOX_IMAGE, PAUSE_IMAGE, TESTSERVER_IMAGE};
/// The CRI v1 protocol types and tonic clients (`cri::v1::runtime_service_client::RuntimeServiceClient`…).
pub use k8s_cri as cri;
pub use registry::{Registry, PRIVATE_PASSWORD, PRIVATE_USER};
/// Dials a CRI unix socket as the kubelet does.
pub use skiff_kubelet::runtime::cri::dial as cri_dial;

use crate::Result;

/// Registry port `skiffctl up` uses (tests take a free one).
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;
/// Pod CIDR and CNI bridge of `skiffctl up`'s single local node.
pub const DEFAULT_POD_CIDR: &str = "10.42.0.0/24";
pub const DEFAULT_BRIDGE: &str = "skiff0";

/// How to start a registry and containerd. `Default` suits tests: a free
/// registry port and a pod CIDR and bridge of their own
/// ([`ContainerdOptions`]), so runs side by side don't collide.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Registry port on 127.0.0.1 (default: a free port).
    pub registry_port: Option<u16>,
    pub containerd: ContainerdOptions,
}

impl RuntimeOptions {
    /// The fixed addresses of `skiffctl up`'s local node: registry on
    /// 127.0.0.1:5000, pods on 10.42.0.0/24 behind bridge `skiff0`.
    pub fn local_node() -> Self {
        Self {
            registry_port: Some(DEFAULT_REGISTRY_PORT),
            containerd: ContainerdOptions {
                pod_cidr: Some(DEFAULT_POD_CIDR.into()),
                bridge: Some(DEFAULT_BRIDGE.into()),
                host: None,
            },
        }
    }
}

/// A registry with the test images in it and a containerd pulling from it.
///
/// containerd drops (and cleans up its pods) before the registry stops.
pub struct Runtime {
    containerd: Containerd,
    registry: Registry,
}

impl Runtime {
    /// Starts the registry, pushes the test images, then starts containerd
    /// with its sandbox image in that registry. Everything lives under `dir`.
    pub async fn start(dir: &Path, options: &RuntimeOptions, detach: bool) -> Result<Self> {
        let port = options.registry_port.unwrap_or_else(crate::free_port);
        let registry = Registry::start(dir, std::net::SocketAddr::from(([127, 0, 0, 1], port)), detach).await?;
        ensure_test_images(&registry).await?;
        let containerd = Containerd::start(dir, &registry, &options.containerd, detach).await?;
        Ok(Self { containerd, registry })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts a registry that asks for credentials ([`Registry::start_private`])
    /// beside this one, copies [`BUSYBOX_IMAGE`] into it, and lets this
    /// containerd pull from it. It stops when the caller drops it.
    pub async fn start_private_registry(&self) -> Result<Registry> {
        let dir = self.registry.dir().parent().unwrap_or(self.registry.dir());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let private = Registry::start_private(dir, addr, false).await?;
        let creds = format!("{}:{}", registry::PRIVATE_USER, registry::PRIVATE_PASSWORD);
        let (src, dest) = (self.registry.image(BUSYBOX_IMAGE), private.image(BUSYBOX_IMAGE));
        let (src, dest) = (format!("docker://{src}"), format!("docker://{dest}"));
        run(
            "copying busybox into the private registry",
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--insecure-policy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--dest-creds",
                &creds,
                &src,
                &dest,
            ],
        )
        .await?;
        self.containerd.trust_plain_http(&private.host())?;
        Ok(private)
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    pub fn containerd_mut(&mut self) -> &mut Containerd {
        &mut self.containerd
    }
}

/// Stops the registry and containerd a detached run (`skiffctl up`) left
/// under `state_dir`: removes the pods through CRI while containerd still
/// runs, stops it, cleans what it left outside `state_dir` (as dropping a
/// [`Containerd`] does), then stops the registry. Call it before
/// [`crate::stop_detached`]. False if `state_dir` holds no runtime.
pub async fn stop_detached_runtime(state_dir: &Path) -> Result<bool> {
    let found = containerd::stop_detached(state_dir).await?;
    let registry = state_dir.join("pids/registry.pid");
    let registry_found = registry.exists();
    if registry_found {
        tokio::task::spawn_blocking(move || crate::process::stop_pid_file(&registry)).await.ok();
    }
    Ok(found || registry_found)
}

/// Stops the containerd a detached run left under `dir` (one host's), as
/// [`stop_detached_runtime`] does. False if `dir` has none.
pub async fn stop_detached_containerd(dir: &Path) -> Result<bool> {
    containerd::stop_detached(dir).await
}

// === helpers shared by the runtime modules ===

/// Runs `program args…` to completion; fails with its stderr unless it exits 0.
async fn run(what: &str, program: &str, args: &[&str]) -> Result<std::process::Output> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| crate::Error::Spawn { name: program.into(), source })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(crate::Error::Command {
            what: what.into(),
            command: format!("{program} {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> crate::Error {
    let path = path.display().to_string();
    move |source| crate::Error::Io { what, path, source }
}
