//! A local OCI registry: Debian's `docker-registry serve CONFIG`, storage
//! under `<dir>/registry`, plain HTTP on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::io_err;
use crate::{Process, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Registry {
    process: Process,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Registry {
    /// Starts the registry on 127.0.0.1:`port` with its storage and config
    /// under `<dir>/registry`, and waits until `GET /v2/` answers 200.
    pub async fn start(dir: &Path, addr: SocketAddr, detach: bool) -> Result<Self> {
        let root = dir.join("registry");
        for d in [dir.join("logs"), dir.join("pids"), root.join("storage")] {
            std::fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        let config = root.join("config.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root.join("storage").display()
        );
        std::fs::write(&config, text).map_err(io_err("writing", &config))?;
        let process = Process::spawn(
            "registry",
            Path::new("docker-registry"),
            &["serve", &config.display().to_string()],
            dir,
            detach,
        )?;
        process.wait_http_ok(addr, "/v2/", READY_TIMEOUT).await?;
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
