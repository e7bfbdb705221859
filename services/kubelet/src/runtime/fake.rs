//! An in-memory [`ContainerRuntime`] for unit tests: sandboxes get IPs,
//! containers run until a test makes them exit, images are present or
//! pullable as the test says.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::{proto, ContainerRuntime, ExecOutput, Health};
use crate::Error;

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    sandboxes: BTreeMap<String, proto::PodSandbox>,
    containers: BTreeMap<String, proto::ContainerStatus>,
    /// Images that pull (everything else fails as not found).
    pullable: HashSet<String>,
    present: HashSet<String>,
    /// Every call made, `Op id`, for assertions.
    calls: Vec<String>,
}

fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

fn not_found(op: &'static str, id: &str) -> Error {
    Error::Cri { op, source: tonic::Status::not_found(format!("{id} not found")) }
}

fn matches(have: &std::collections::HashMap<String, String>, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
}

impl FakeRuntime {
    pub fn with_images(images: &[&str]) -> Self {
        let fake = Self::default();
        fake.state.lock().unwrap().pullable.extend(images.iter().map(|s| s.to_string()));
        fake
    }

    /// Ends the running container named `name` with `code` (and `reason`).
    pub fn exit(&self, name: &str, code: i32, reason: &str) {
        let mut st = self.state.lock().unwrap();
        for c in st.containers.values_mut() {
            let running = c.state == proto::ContainerState::ContainerRunning as i32;
            if running && c.metadata.as_ref().is_some_and(|m| m.name == name) {
                c.state = proto::ContainerState::ContainerExited as i32;
                c.exit_code = code;
                c.reason = reason.into();
                c.finished_at = now_nanos();
            }
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The containers as (name, attempt, state) in creation order.
    pub fn containers(&self) -> Vec<(String, u32, i32)> {
        let st = self.state.lock().unwrap();
        st.containers
            .values()
            .map(|c| {
                let m = c.metadata.clone().unwrap_or_default();
                (m.name, m.attempt, c.state)
            })
            .collect()
    }

    pub fn sandbox_count(&self) -> usize {
        self.state.lock().unwrap().sandboxes.len()
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn health(&self) -> Result<Health, Error> {
        Ok(Health { runtime_ready: true, network_ready: true, message: String::new() })
    }

    async fn version(&self) -> Result<String, Error> {
        Ok("fake://1.0".into())
    }

    async fn list_sandboxes(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::PodSandbox>, Error> {
        let st = self.state.lock().unwrap();
        Ok(st.sandboxes.values().filter(|s| matches(&s.labels, labels)).cloned().collect())
    }

    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, Error> {
        let st = self.state.lock().unwrap();
        st.sandboxes.get(id).map(|_| Some("10.0.0.5".to_string())).ok_or_else(|| not_found("PodSandboxStatus", id))
    }

    async fn run_sandbox(&self, config: proto::PodSandboxConfig) -> Result<String, Error> {
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let id = format!("sb{:03}", st.next_id);
        st.calls.push(format!("RunPodSandbox {id}"));
        let sandbox = proto::PodSandbox {
            id: id.clone(),
            metadata: config.metadata,
            state: proto::PodSandboxState::SandboxReady as i32,
            created_at: now_nanos(),
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: String::new(),
        };
        st.sandboxes.insert(id.clone(), sandbox);
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("StopPodSandbox {id}"));
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.state = proto::PodSandboxState::SandboxNotready as i32;
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("RemovePodSandbox {id}"));
        st.sandboxes.remove(id);
        st.containers.retain(|_, c| c.labels.get("sandbox").map(String::as_str) != Some(id));
        Ok(())
    }

    async fn list_containers(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::Container>, Error> {
        let st = self.state.lock().unwrap();
        Ok(st
            .containers
            .values()
            .filter(|c| matches(&c.labels, labels))
            .map(|c| proto::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.labels.get("sandbox").cloned().unwrap_or_default(),
                metadata: c.metadata.clone(),
                image: c.image.clone(),
                image_ref: c.image_ref.clone(),
                state: c.state,
                created_at: c.created_at,
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<proto::ContainerStatus, Error> {
        let st = self.state.lock().unwrap();
        st.containers.get(id).cloned().ok_or_else(|| not_found("ContainerStatus", id))
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: proto::ContainerConfig,
        _sandbox: proto::PodSandboxConfig,
    ) -> Result<String, Error> {
        let mut st = self.state.lock().unwrap();
        if config.command.first().is_some_and(|c| c.starts_with("/missing")) {
            let message = format!("exec: {:?}: executable file not found in $PATH", config.command[0]);
            return Err(Error::Cri { op: "CreateContainer", source: tonic::Status::unknown(message) });
        }
        st.next_id += 1;
        let id = format!("c{:03}", st.next_id);
        st.calls.push(format!("CreateContainer {id}"));
        let mut labels = config.labels;
        labels.insert("sandbox".into(), sandbox_id.into());
        let status = proto::ContainerStatus {
            id: id.clone(),
            metadata: config.metadata,
            state: proto::ContainerState::ContainerCreated as i32,
            created_at: now_nanos(),
            image: config.image.clone(),
            image_ref: format!("sha256:{}", config.image.map(|i| i.image).unwrap_or_default()),
            labels,
            annotations: config.annotations,
            ..Default::default()
        };
        st.containers.insert(id.clone(), status);
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("StartContainer {id}"));
        let c = st.containers.get_mut(id).ok_or_else(|| not_found("StartContainer", id))?;
        c.state = proto::ContainerState::ContainerRunning as i32;
        c.started_at = now_nanos();
        Ok(())
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("StopContainer {id}"));
        if let Some(c) = st.containers.get_mut(id) {
            if c.state == proto::ContainerState::ContainerRunning as i32 {
                c.state = proto::ContainerState::ContainerExited as i32;
                c.exit_code = 137;
                c.reason = "Error".into();
                c.finished_at = now_nanos();
            }
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("RemoveContainer {id}"));
        st.containers.remove(id);
        Ok(())
    }

    async fn exec_sync(&self, _id: &str, cmd: Vec<String>, _timeout: Option<Duration>) -> Result<ExecOutput, Error> {
        // `true` succeeds, `echo` prints its arguments, anything else fails.
        match cmd.first().map(String::as_str) {
            Some("true") => Ok(ExecOutput::default()),
            Some("echo") => {
                Ok(ExecOutput { stdout: format!("{}\n", cmd[1..].join(" ")).into_bytes(), ..Default::default() })
            }
            _ => Ok(ExecOutput { exit_code: 1, ..Default::default() }),
        }
    }

    async fn exec_url(&self, request: proto::ExecRequest) -> Result<String, Error> {
        Ok(format!("http://127.0.0.1:1/exec/{}", request.container_id))
    }

    async fn container_stats(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::ContainerStats>, Error> {
        let st = self.state.lock().unwrap();
        let stats = st.containers.values().filter(|c| matches(&c.labels, labels)).map(|c| proto::ContainerStats {
            attributes: Some(proto::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.metadata.clone(),
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
            }),
            ..Default::default()
        });
        Ok(stats.collect())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, Error> {
        let st = self.state.lock().unwrap();
        Ok(st.present.contains(image).then(|| format!("sha256:{image}")))
    }

    async fn pull_image(&self, image: &str, _auth: Option<proto::AuthConfig>) -> Result<String, Error> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("PullImage {image}"));
        if !st.pullable.contains(image) {
            let message = format!("failed to resolve reference {image:?}: not found");
            return Err(Error::Cri { op: "PullImage", source: tonic::Status::not_found(message) });
        }
        st.present.insert(image.to_string());
        Ok(format!("sha256:{image}"))
    }
}
