//! The repository's docker-compose.yml as a stack of its own: one compose
//! project per [`Stack`], on its own subnet and free host ports, so a
//! user's stack (or another run's) beside it is untouched; taken down,
//! volumes included, on drop. Its images come from `scripts/images`
//! ([`build_images`]). The compose test and `skiff-bench compose-up` both
//! start it this way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const ADMIN_CONFIG: &str = "/etc/skiff/pki/admin.yaml";

/// The repository's root (where docker-compose.yml is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `scripts/images --profile PROFILE` (`dev` or `release`).
pub fn build_images(profile: &str) -> Result<(), String> {
    let out = Command::new(repo().join("scripts/images"))
        .args(["--profile", profile])
        .current_dir(repo())
        .output()
        .map_err(|e| format!("running scripts/images: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("scripts/images --profile {profile}: {}\n{}", text(&out.stdout), text(&out.stderr)))
    }
}

pub struct Stack {
    project: String,
    env: Vec<(String, String)>,
    http: SocketAddr,
    /// A container of the `skiffctl` service kept running, to exec
    /// skiffctl in without starting a container per call.
    toolbox: std::sync::OnceLock<String>,
}

impl Stack {
    /// A stack named `PREFIX-PID`, not started.
    pub fn new(prefix: &str) -> Self {
        let pid = std::process::id();
        let http = crate::free_port();
        let mut stack = Self {
            project: format!("{prefix}-{pid}"),
            env: Vec::new(),
            http: ([127, 0, 0, 1], http).into(),
            toolbox: std::sync::OnceLock::new(),
        };
        stack.set("SKIFF_NET", &format!("172.29.{}", 100 + pid % 100));
        stack.set("SKIFF_HTTP_PORT", &http.to_string());
        for port in ["SKIFF_HTTPS_PORT", "SKIFF_API_PORT", "SKIFF_PROMETHEUS_PORT"] {
            stack.set(port, &crate::free_port().to_string());
        }
        stack
    }

    /// Sets one of docker-compose.yml's variables (`SKIFF_...`).
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The ingress's published HTTP address.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    fn output(&self, args: &[&str]) -> Result<Output, String> {
        Command::new("docker-compose")
            .current_dir(repo())
            .args(["-p", &self.project])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|e| format!("running docker-compose (Debian: apt-get install docker-compose): {e}"))
    }

    /// `docker-compose ARGS`: its stdout, or an error with all it printed.
    pub fn compose(&self, args: &[&str]) -> Result<String, String> {
        let out = self.output(args)?;
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("docker-compose {args:?}: {}{}", text(&out.stdout), text(&out.stderr)))
        }
    }

    /// `skiffctl ARGS` as the administrator, inside the stack's network.
    pub fn skiffctl(&self, args: &[&str]) -> Result<String, String> {
        let toolbox = match self.toolbox.get() {
            Some(id) => id.clone(),
            None => {
                let run = ["run", "-d", "--entrypoint", "sleep", "skiffctl", "infinity"];
                let id = self.compose(&run)?.trim().to_string();
                self.toolbox.get_or_init(|| id).clone()
            }
        };
        let out = Command::new("docker")
            .args(["exec", &toolbox, "skiffctl", "--kubeconfig", ADMIN_CONFIG])
            .args(args)
            .output()
            .map_err(|e| format!("running docker exec: {e}"))?;
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!("skiffctl {args:?}: {}{}", text(&out.stdout), text(&out.stderr)))
        }
    }

    /// `skiffctl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["get"];
        all.extend(args);
        all.extend(["-o", "json"]);
        let out = self.skiffctl(&all)?;
        serde_json::from_str(&out).map_err(|e| format!("skiffctl {all:?} printed no JSON ({e}): {out}"))
    }

    /// The services' last log lines, for a failure's message.
    pub fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "40"]).unwrap_or_else(|e| e)
    }

    /// Polls `check` every 500 ms until it succeeds; after `timeout`, fails
    /// with its last reason.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match check() {
                Ok(value) => return Ok(value),
                Err(reason) if Instant::now() > deadline => {
                    return Err(format!("gave up waiting for {what} after {timeout:?}: {reason}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// How many Nodes are Ready.
    pub fn ready_nodes(&self) -> Result<usize, String> {
        let nodes = self.get_json(&["nodes"])?;
        Ok(nodes["items"].as_array().map_or(0, |n| n.iter().filter(|n| node_ready(n)).count()))
    }

    /// What Docker still holds of this project: containers, volumes, networks.
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for kind in ["container", "volume", "network"] {
            let mut args = vec![kind, "ls", "-q", "--filter", &label];
            if kind == "container" {
                args.push("--all");
            }
            match Command::new("docker").args(&args).output() {
                Ok(out) => left.extend(text(&out.stdout).lines().map(|id| format!("{kind} {id}"))),
                Err(e) => left.push(format!("docker {kind} ls: {e}")),
            }
        }
        left
    }

    /// `docker-compose down`, volumes and the tools profile's containers
    /// included. Docker releases a removed container's network endpoint a
    /// moment after the container is gone, so removing the network may
    /// find it still "has active endpoints": `down` is run again (it is
    /// idempotent) for a few seconds. Seen once: an endpoint the daemon
    /// never released, with every container gone. The stack is down then
    /// but for an empty network under this run's own project name, which
    /// nothing else uses; that is reported, not failed on.
    pub fn down(&self) -> Result<(), String> {
        if let Some(toolbox) = self.toolbox.get() {
            let _ = Command::new("docker").args(["rm", "-f", toolbox]).output();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.compose(&["--profile", "tools", "down", "-v", "--remove-orphans", "-t", "2"]) {
                Ok(_) => return Ok(()),
                Err(e) if e.contains("has active endpoints") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if e.contains("has active endpoints") && self.containers_left() == Some(0) => {
                    eprintln!("warning: {}: the network outlived its containers (left behind): {e}", self.project);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How many containers of this project still exist, running or not.
    fn containers_left(&self) -> Option<usize> {
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let out = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().count())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

fn node_ready(node: &Value) -> bool {
    let conditions = node["status"]["conditions"].as_array();
    conditions.is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}
