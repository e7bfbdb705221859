//! [`ContainerRuntime`] over a CRI v1 gRPC socket (containerd's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::{proto, ContainerRuntime, ExecOutput, Health};
use crate::Error;

/// Calls that should answer soon give up after this long, so a hung
/// containerd shows up as an error rather than a stuck pod worker.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// CRI replies carry exec output and long container lists: above tonic's
/// 4 MiB default, with Kubernetes' kubelet's limit.
pub const MAX_CRI_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The one way skiff dials a CRI runtime: HTTP/2 over the unix socket at
/// `socket`, connected lazily (containerd may come up after us, and a
/// broken connection is dialled again on the next call).
pub fn dial(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    });
    // The URI is a placeholder: the connector always dials the socket.
    tonic::transport::Endpoint::from_static("http://[::1]:50051").connect_with_connector_lazy(connector)
}

/// The runtime service on `channel`, with the CRI message limit.
pub fn runtime_client(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel)
        .max_decoding_message_size(MAX_CRI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CRI_MESSAGE_BYTES)
}

/// The image service on `channel`, with the CRI message limit.
pub fn image_client(channel: Channel) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel)
        .max_decoding_message_size(MAX_CRI_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CRI_MESSAGE_BYTES)
}

/// containerd (or any CRI v1 runtime) on a unix socket.
#[derive(Clone)]
pub struct CriRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriRuntime {
    /// A runtime on `endpoint` (`unix:///run/containerd/containerd.sock` or
    /// a bare path). Connects lazily: containerd may come up after us, and
    /// a broken connection is dialled again on the next call.
    pub fn connect(endpoint: &str) -> Result<Self, Error> {
        let path = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
        if !path.is_absolute() {
            return Err(Error::InvalidFlag {
                flag: "container-runtime-endpoint",
                reason: format!("{endpoint:?} is not unix:///absolute/path"),
            });
        }
        let channel = dial(&path);
        Ok(Self { runtime: runtime_client(channel.clone()), images: image_client(channel) })
    }

    fn rt(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }
}

/// A request that gives up after `timeout`.
fn call<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn cri(op: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |source| Error::Cri { op, source }
}

fn label_map(labels: &[(&str, &str)]) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[async_trait::async_trait]
impl ContainerRuntime for CriRuntime {
    async fn health(&self) -> Result<Health, Error> {
        let reply = self
            .rt()
            .status(call(proto::StatusRequest { verbose: false }, CALL_TIMEOUT))
            .await
            .map_err(cri("Status"))?;
        let conditions = reply.into_inner().status.map(|s| s.conditions).unwrap_or_default();
        let is = |ty: &str| conditions.iter().any(|c| c.r#type == ty && c.status);
        let message = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message).trim().to_string())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Health { runtime_ready: is("RuntimeReady"), network_ready: is("NetworkReady"), message })
    }

    async fn version(&self) -> Result<String, Error> {
        let v = self
            .rt()
            .version(call(proto::VersionRequest { version: "v1".into() }, CALL_TIMEOUT))
            .await
            .map_err(cri("Version"))?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    async fn list_sandboxes(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::PodSandbox>, Error> {
        let filter = proto::PodSandboxFilter { label_selector: label_map(labels), ..Default::default() };
        let reply = self
            .rt()
            .list_pod_sandbox(call(proto::ListPodSandboxRequest { filter: Some(filter) }, CALL_TIMEOUT))
            .await
            .map_err(cri("ListPodSandbox"))?;
        Ok(reply.into_inner().items)
    }

    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>, Error> {
        let reply = self
            .rt()
            .pod_sandbox_status(call(
                proto::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(cri("PodSandboxStatus"))?;
        let ip = reply.into_inner().status.and_then(|s| s.network).map(|n| n.ip).filter(|ip| !ip.is_empty());
        Ok(ip)
    }

    async fn run_sandbox(&self, config: proto::PodSandboxConfig) -> Result<String, Error> {
        let req = proto::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        let reply = self.rt().run_pod_sandbox(call(req, CALL_TIMEOUT)).await.map_err(cri("RunPodSandbox"))?;
        Ok(reply.into_inner().pod_sandbox_id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), Error> {
        let req = proto::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.rt().stop_pod_sandbox(call(req, CALL_TIMEOUT)).await.map_err(cri("StopPodSandbox"))?;
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), Error> {
        let req = proto::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.rt().remove_pod_sandbox(call(req, CALL_TIMEOUT)).await.map_err(cri("RemovePodSandbox"))?;
        Ok(())
    }

    async fn list_containers(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::Container>, Error> {
        let filter = proto::ContainerFilter { label_selector: label_map(labels), ..Default::default() };
        let reply = self
            .rt()
            .list_containers(call(proto::ListContainersRequest { filter: Some(filter) }, CALL_TIMEOUT))
            .await
            .map_err(cri("ListContainers"))?;
        Ok(reply.into_inner().containers)
    }

    async fn container_status(&self, id: &str) -> Result<proto::ContainerStatus, Error> {
        let req = proto::ContainerStatusRequest { container_id: id.into(), verbose: false };
        let reply = self.rt().container_status(call(req, CALL_TIMEOUT)).await.map_err(cri("ContainerStatus"))?;
        reply
            .into_inner()
            .status
            .ok_or_else(|| Error::Cri { op: "ContainerStatus", source: tonic::Status::not_found(id.to_string()) })
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: proto::ContainerConfig,
        sandbox: proto::PodSandboxConfig,
    ) -> Result<String, Error> {
        let req = proto::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        };
        let reply = self.rt().create_container(call(req, CALL_TIMEOUT)).await.map_err(cri("CreateContainer"))?;
        Ok(reply.into_inner().container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), Error> {
        let req = proto::StartContainerRequest { container_id: id.into() };
        self.rt().start_container(call(req, CALL_TIMEOUT)).await.map_err(cri("StartContainer"))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let req = proto::StopContainerRequest { container_id: id.into(), timeout: grace.as_secs() as i64 };
        // The call lasts as long as the grace period, and then some.
        self.rt().stop_container(call(req, grace + CALL_TIMEOUT)).await.map_err(cri("StopContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), Error> {
        let req = proto::RemoveContainerRequest { container_id: id.into() };
        self.rt().remove_container(call(req, CALL_TIMEOUT)).await.map_err(cri("RemoveContainer"))?;
        Ok(())
    }

    async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: Option<Duration>) -> Result<ExecOutput, Error> {
        // CRI's 0 is "no timeout"; a set one is whole seconds, at least 1.
        let seconds = timeout.map_or(0, |t| i64::try_from(t.as_secs().max(1)).unwrap_or(i64::MAX));
        let req = proto::ExecSyncRequest { container_id: id.into(), cmd, timeout: seconds };
        let request = match timeout {
            Some(t) => call(req, t + Duration::from_secs(2)),
            None => tonic::Request::new(req),
        };
        let reply = self.rt().exec_sync(request).await.map_err(cri("ExecSync"))?.into_inner();
        Ok(ExecOutput { exit_code: reply.exit_code, stdout: reply.stdout, stderr: reply.stderr })
    }

    async fn exec_url(&self, request: proto::ExecRequest) -> Result<String, Error> {
        let reply = self.rt().exec(call(request, CALL_TIMEOUT)).await.map_err(cri("Exec"))?;
        Ok(reply.into_inner().url)
    }

    async fn container_stats(&self, labels: &[(&str, &str)]) -> Result<Vec<proto::ContainerStats>, Error> {
        let filter = proto::ContainerStatsFilter { label_selector: label_map(labels), ..Default::default() };
        let req = proto::ListContainerStatsRequest { filter: Some(filter) };
        let reply = self.rt().list_container_stats(call(req, CALL_TIMEOUT)).await.map_err(cri("ListContainerStats"))?;
        Ok(reply.into_inner().stats)
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, Error> {
        let req = proto::ImageStatusRequest {
            image: Some(proto::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        };
        let reply = self.images.clone().image_status(call(req, CALL_TIMEOUT)).await.map_err(cri("ImageStatus"))?;
        Ok(reply.into_inner().image.map(|i| i.id).filter(|id| !id.is_empty()))
    }

    async fn pull_image(&self, image: &str, auth: Option<proto::AuthConfig>) -> Result<String, Error> {
        let req = proto::PullImageRequest {
            image: Some(proto::ImageSpec { image: image.into(), ..Default::default() }),
            auth,
            sandbox_config: None,
        };
        // Big images take long.
        let reply =
            self.images.clone().pull_image(call(req, Duration::from_secs(600))).await.map_err(cri("PullImage"))?;
        Ok(reply.into_inner().image_ref)
    }
}
