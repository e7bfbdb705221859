//! A local OCI registry: Debian's `docker-registry serve CONFIG`, storage
//! under `<dir>/registry`, plain HTTP on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::io_err;
use crate::{Process, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The user and password a registry from [`Registry::start_private`] takes.
pub const PRIVATE_USER: &str = "puller";
pub const PRIVATE_PASSWORD: &str = "hunter2";
/// [`PRIVATE_USER`]'s htpasswd line: docker-registry takes bcrypt only, and
/// no bcrypt crate or tool is needed at test time for a fixed password.
/// Made with libxcrypt: `perl -e 'print crypt("hunter2", "$2b$05$" . SALT)'`.
const PRIVATE_HTPASSWD: &str = "puller:$2b$05$abcdefghijklmnopqrstuuoXuKqgZXLiJqzfmMXDDhSFPIvxV7t8.\n";

pub struct Registry {
    process: Process,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Registry {
    /// Starts the registry on `addr` with its storage and config under
    /// `<dir>/registry`, and waits until `GET /v2/` answers 200.
    pub async fn start(dir: &Path, addr: SocketAddr, detach: bool) -> Result<Self> {
        Self::spawn(dir, "registry", addr, None, detach).await
    }

    /// A second registry, under `<dir>/registry-private`, that answers only
    /// requests with [`PRIVATE_USER`]'s credentials (htpasswd auth), for
    /// pulls with imagePullSecrets. Waits until `GET /v2/` answers 401.
    pub async fn start_private(dir: &Path, addr: SocketAddr, detach: bool) -> Result<Self> {
        Self::spawn(dir, "registry-private", addr, Some(PRIVATE_HTPASSWD), detach).await
    }

    async fn spawn(dir: &Path, name: &str, addr: SocketAddr, htpasswd: Option<&str>, detach: bool) -> Result<Self> {
        let root = dir.join(name);
        for d in [dir.join("logs"), dir.join("pids"), root.join("storage")] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root.join("storage").display()
        );
        if let Some(users) = htpasswd {
            let file = root.join("htpasswd");
            std::fs::write(&file, users).map_err(io_err("writing", &file))?;
            text.push_str(&format!("auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n", file.display()));
        }
        let config = root.join("config.yml");
        std::fs::write(&config, text).map_err(io_err("writing", &config))?;
        let process =
            Process::spawn(name, Path::new("docker-registry"), &["serve", &config.display().to_string()], dir, detach)?;
        let ready = if htpasswd.is_some() { 401 } else { 200 };
        process.wait_http_status(addr, "/v2/", ready, READY_TIMEOUT).await?;
        Ok(Self { process, addr, dir: root })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The full reference of `name` (`busybox:latest`) in this registry:
    /// `127.0.0.1:PORT/busybox:latest`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// The registry's own folder (config and storage).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn process(&self) -> &Process {
        &self.process
    }
}
