//! The container runtime as the kubelet sees it: one small trait over the
//! CRI v1 calls it makes, with the real implementation on containerd's CRI
//! socket ([`CriRuntime`]) and an in-memory fake for unit tests.
//!
//! The CRI messages themselves (`PodSandboxConfig`, `ContainerStatus`…) are
//! the vocabulary: the trait adds no types of its own beyond what a call
//! returns, so the fake and the real runtime describe the same things.

pub mod cri;
#[cfg(test)]
pub mod fake;

use std::time::Duration;

pub use self::cri::CriRuntime;
pub use k8s_cri::v1 as proto;

use crate::Error;

/// Labels the kubelet puts on every sandbox and container it creates, as
/// Kubernetes names them; they are how it finds its own after a restart.
pub mod labels {
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// How many times the container restarted, when the runtime keeps it
    /// (else the CRI attempt counts).
    pub const RESTART_COUNT_ANNOTATION: &str = "io.kubernetes.container.restartCount";
}

/// Whether the runtime and its network are ready (CRI `Status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub runtime_ready: bool,
    pub network_ready: bool,
    /// Why not, when not: the conditions that are false, with their reasons.
    pub message: String,
}

/// The outcome of a command run in a container (CRI `ExecSync`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// stdout then stderr, as text (what a probe failure reports).
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&self.stderr));
        text
    }
}

/// The CRI calls the kubelet makes. Every call names its CRI operation in
/// its error ([`Error::Cri`]).
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// `Status`: runtime and network readiness.
    async fn health(&self) -> Result<Health, Error>;
    /// `Version`: `name://version`, as nodeInfo.containerRuntimeVersion.
    async fn version(&self) -> Result<String, Error>;

    /// `ListPodSandbox` with a label filter (empty: all).
    async fn list_sandboxes(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::PodSandbox>, Error>;
    /// `PodSandboxStatus`: the sandbox's pod IP, if it has one.
    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, Error>;
    async fn run_sandbox(&self, config: proto::PodSandboxConfig) -> Result<String, Error>;
    async fn stop_sandbox(&self, id: &str) -> Result<(), Error>;
    async fn remove_sandbox(&self, id: &str) -> Result<(), Error>;

    /// `ListContainers` with a label filter (empty: all).
    async fn list_containers(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::Container>, Error>;
    async fn container_status(&self, id: &str) -> Result<proto::ContainerStatus, Error>;
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: proto::ContainerConfig,
        sandbox: proto::PodSandboxConfig,
    ) -> Result<String, Error>;
    async fn start_container(&self, id: &str) -> Result<(), Error>;
    /// `StopContainer`: SIGTERM, then SIGKILL after `grace`.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error>;
    async fn remove_container(&self, id: &str) -> Result<(), Error>;
    /// `ExecSync`: runs `cmd` in the container, giving up after `timeout`
    /// (None: waits as long as the command runs, as `kubectl exec` does).
    async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: Option<Duration>) -> Result<ExecOutput, Error>;
    /// `Exec`: the URL of the runtime's streaming server for an
    /// interactive exec.
    async fn exec_url(&self, request: proto::ExecRequest) -> Result<String, Error>;
    /// `ListContainerStats` with a label filter (empty: all).
    async fn container_stats(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::ContainerStats>, Error>;

    /// `ImageStatus`: the image's id if it is present.
    async fn image_id(&self, image: &str) -> Result<Option<String>, Error>;
    /// `PullImage`: the pulled image's id.
    async fn pull_image(&self, image: &str, auth: Option<proto::AuthConfig>) -> Result<String, Error>;
}
