//! `skiff.v1.PodProxy`: a pod's logs, exec and stats, passed through to
//! the kubelet of the pod's node (proto/skiff/v1/kubelet.proto), so
//! clients only ever talk to the apiserver.
//!
//! A call looks up the pod (it must be bound to a node), settles which
//! container it means (the only one when none is named), looks up the Node
//! for its kubelet endpoint (the InternalIP address and
//! status.daemonEndpoints.kubeletEndpoint.Port), and passes the call on
//! over a channel kept per node. Errors the kubelet answers pass through;
//! a kubelet that can't be reached is UNAVAILABLE naming the node.
//!
//! Stats of a whole namespace ask each node that runs one of its pods,
//! and keep only the pods the API knows there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::Value;
use skiff_api::proto::kubelet_client::KubeletClient;
use skiff_api::proto::pod_proxy_server::PodProxy;
use skiff_api::proto::{
    exec_input, ExecInput, ExecOutput, ExecStart, LogChunk, LogsRequest, NodeStats, PodStats, StatsReply, StatsRequest,
};
use skiff_api::{FieldSelector, KindInfo, LabelSelector};
use skiff_telemetry::{grpc_code_label, GrpcMetrics};
use tokio::sync::watch as signal;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::{Access, Authorizer};
use crate::cache::Filter;
use crate::registry::{ListAt, Registry};
use crate::Error;

/// How long dialing a kubelet may take before the call fails.
const KUBELET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PodProxyService {
    pub registry: Arc<Registry>,
    pub authorizer: Arc<Authorizer>,
    pub metrics: GrpcMetrics,
    pub shutdown: signal::Receiver<bool>,
    pub kubelets: Kubelets,
}

/// One lazily connected channel per node, redialed when the node
/// advertises a different endpoint; TLS with the apiserver's kubelet client
/// certificate when the kubelets serve TLS.
#[derive(Default)]
pub struct Kubelets {
    channels: Mutex<HashMap<String, (String, Channel)>>,
    tls: Option<ClientTlsConfig>,
}

impl Kubelets {
    /// Kubelets reached over TLS: their certificates checked against `ca`,
    /// the apiserver known to them by its client certificate.
    pub fn with_tls(ca: &[u8], cert: &[u8], key: &[u8]) -> Self {
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(Identity::from_pem(cert, key));
        Self { channels: Mutex::default(), tls: Some(tls) }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn channel(&self, node: &str, endpoint: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, channel)) = channels.get(node) {
            if known == endpoint {
                return Ok(channel.clone());
            }
        }
        let bad = |e: tonic::transport::Error| unreachable(node, format!("bad endpoint {endpoint}: {e}"));
        let mut dial = Endpoint::from_shared(endpoint.to_string())
            .map_err(bad)?
            .connect_timeout(KUBELET_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            dial = dial.tls_config(tls.clone()).map_err(bad)?;
        }
        let channel = dial.connect_lazy();
        channels.insert(node.to_string(), (endpoint.to_string(), channel.clone()));
        Ok(channel)
    }
}

fn unreachable(node: &str, reason: String) -> Error {
    Error::KubeletUnreachable { node: node.to_string(), reason }
}

/// Where a call goes: the kubelet of the pod's node, and the container.
struct Target {
    node: String,
    endpoint: String,
    container: String,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl PodProxyService {
    async fn resolve(&self, namespace: &str, pod: &str, container: &str) -> Result<Target, Error> {
        let pod_obj = self.registry.get_value("Pod", namespace, pod).await?;
        let node = pod_obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
        if node.is_empty() {
            return Err(Error::PodNotScheduled { pod: pod.to_string() });
        }
        let container = pick_container(&pod_obj, pod, container)?;
        let endpoint = self.node_endpoint(node).await?;
        Ok(Target { node: node.to_string(), endpoint, container })
    }

    /// Where the kubelet of `node` serves.
    async fn node_endpoint(&self, node: &str) -> Result<String, Error> {
        let node_obj = match self.registry.get_value("Node", "", node).await {
            Ok(value) => value,
            Err(Error::NotFound { .. }) => return Err(unreachable(node, "the node does not exist".into())),
            Err(e) => return Err(e),
        };
        kubelet_endpoint(&node_obj, self.kubelets.scheme()).map_err(|reason| unreachable(node, reason))
    }

    /// Stats of one pod: from its node's kubelet.
    async fn pod_stats(&self, r: StatsRequest) -> Result<Vec<PodStats>, Status> {
        let pod_obj = self.registry.get_value("Pod", &r.namespace, &r.pod).await?;
        let node = pod_obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
        if node.is_empty() {
            return Err(Error::PodNotScheduled { pod: r.pod }.into());
        }
        let target =
            Target { node: node.to_string(), endpoint: self.node_endpoint(node).await?, container: String::new() };
        let mut request = Request::new(r);
        skiff_telemetry::inject_trace_context(request.metadata_mut());
        let reply = self.kubelet(&target)?.stats(request).await.map_err(|s| from_kubelet(&target, s))?;
        Ok(reply.into_inner().pods)
    }

    /// Stats of every scheduled pod of a namespace (every namespace for
    /// ""): one call per node that runs any, in turn; a node that fails is
    /// logged and left out. Only pods the API holds on that node count.
    async fn namespace_stats(&self, namespace: &str) -> Result<Vec<PodStats>, Status> {
        let info = KindInfo::by_kind("Pod").map_err(Error::from)?;
        let filter = Filter {
            key_prefix: info.key_prefix(Some(namespace)),
            labels: LabelSelector::everything(),
            fields: FieldSelector::default(),
        };
        let page = self.registry.list(info, &filter, 0, "", ListAt::Latest).await?;
        // node → the (namespace, name) of its pods.
        let mut by_node: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for bytes in &page.items {
            let pod = parse(bytes)?;
            let field = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
            let node = field("/spec/nodeName");
            if !node.is_empty() {
                by_node.entry(node).or_default().insert((field("/metadata/namespace"), field("/metadata/name")));
            }
        }
        let mut pods = Vec::new();
        for (node, known) in by_node {
            let result = async {
                let target =
                    Target { endpoint: self.node_endpoint(&node).await?, node: node.clone(), container: String::new() };
                let mut request = Request::new(StatsRequest { namespace: namespace.to_string(), ..Default::default() });
                skiff_telemetry::inject_trace_context(request.metadata_mut());
                let reply = self.kubelet(&target)?.stats(request).await.map_err(|s| from_kubelet(&target, s))?;
                Ok::<_, Status>(reply.into_inner().pods)
            }
            .await;
            match result {
                Ok(stats) => {
                    pods.extend(stats.into_iter().filter(|p| known.contains(&(p.namespace.clone(), p.name.clone()))))
                }
                Err(status) => tracing::warn!(%node, error = %status.message(), "no stats from the node's kubelet"),
            }
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(pods)
    }

    fn kubelet(&self, target: &Target) -> Result<KubeletClient<Channel>, Error> {
        Ok(KubeletClient::new(self.kubelets.channel(&target.node, &target.endpoint)?))
    }

    /// Ends `stream` with UNAVAILABLE when the apiserver drains, as watches
    /// do, so a followed log never holds up shutdown and its client knows
    /// the log did not end there.
    fn until_shutdown<T: Send + 'static>(
        &self,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> BoxStream<T> {
        let mut stop = self.shutdown.clone();
        let stopped = self.shutdown.clone();
        let cut = stream.take_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let farewell = futures::stream::once(async move { *stopped.borrow() })
            .filter_map(|stopped| std::future::ready(stopped.then(|| Err(Error::ShuttingDown.into()))));
        Box::pin(cut.chain(farewell))
    }

    /// Counts a call by method and outcome, as the Objects service does.
    /// An exec session for `user`, whichever front it came in by: `start`
    /// says what to run where, `inbound` (stdin, resizes) follows it to the
    /// kubelet, and the output streams back.
    pub async fn exec_session<S: Stream<Item = ExecInput> + Send + 'static>(
        &self,
        user: crate::auth::UserInfo,
        meta: tonic::metadata::MetadataMap,
        mut start: ExecStart,
        inbound: S,
    ) -> Result<BoxStream<ExecOutput>, Status> {
        let started = Instant::now();
        let span = tracing::info_span!("rpc", method = "Exec", kind = "Pod");
        skiff_telemetry::set_remote_parent(&span, &meta);
        let result = async {
            self.allow(&user, "create", "exec", &start.namespace, &start.pod)?;
            let target = self.resolve(&start.namespace, &start.pod, &start.container).await?;
            start.container = target.container.clone();
            let first = ExecInput { input: Some(exec_input::Input::Start(start)) };
            let mut request = Request::new(futures::stream::iter([first]).chain(inbound));
            skiff_telemetry::inject_trace_context(request.metadata_mut());
            let reply = self.kubelet(&target)?.exec(request).await.map_err(|s| from_kubelet(&target, s))?;
            Ok::<_, Status>(self.until_shutdown(reply.into_inner()))
        }
        .instrument(span)
        .await;
        self.observe("Exec", started, &result);
        result
    }

    fn observe<T>(&self, method: &'static str, started: Instant, result: &Result<T, Status>) {
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.observe(method, "Pod", grpc_code_label(code), started.elapsed());
    }
}

fn parse(bytes: &[u8]) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::BadJson { what: "stored object", source })
}

/// The container a call means: the one named (it must be in the pod), else
/// the pod's only container.
fn pick_container(pod: &Value, pod_name: &str, wanted: &str) -> Result<String, Error> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
            .collect()
    };
    let containers = names("containers");
    if wanted.is_empty() {
        return match containers.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(Error::BadRequest(format!(
                "a container name must be specified for pod {pod_name:?}, choose one of: [{}]",
                containers.join(" ")
            ))),
        };
    }
    if containers.iter().chain(names("initContainers").iter()).any(|c| c == wanted) {
        Ok(wanted.to_string())
    } else {
        Err(Error::ContainerNotInPod { pod: pod_name.to_string(), container: wanted.to_string() })
    }
}

/// `http://<InternalIP>:<kubelet port>` of a Node, or why there is none.
fn kubelet_endpoint(node: &Value, scheme: &str) -> Result<String, String> {
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| (1..=65535).contains(p))
        .ok_or("the node advertises no kubelet port (status.daemonEndpoints.kubeletEndpoint.Port)")?;
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array).into_iter().flatten();
    let ip = addresses
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .find_map(|a| a.get("address").and_then(Value::as_str))
        .ok_or("the node has no InternalIP address")?;
    Ok(match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("{scheme}://[{v6}]:{port}"),
        _ => format!("{scheme}://{ip}:{port}"),
    })
}

/// A status from the kubelet call: the kubelet's own answers pass through;
/// a local one (it carries the transport error as its source) means the
/// kubelet could not be reached.
fn from_kubelet(target: &Target, status: Status) -> Status {
    if std::error::Error::source(&status).is_some() {
        let reason = format!("{} ({})", status.message(), target.endpoint);
        return unreachable(&target.node, reason).into();
    }
    status
}

impl PodProxyService {
    /// Whether `user` may `verb` the pod (or its `subresource`).
    fn allow(
        &self,
        user: &crate::auth::UserInfo,
        verb: &'static str,
        subresource: &'static str,
        namespace: &str,
        pod: &str,
    ) -> Result<(), Status> {
        let access = Access { verb, kind: "Pod", subresource, namespace, name: pod };
        self.authorizer.authorize(user, &access).map_err(|denied| Error::Denied(denied).into())
    }

    /// The pods' usage (one pod, or those of a namespace, or all): readable
    /// by whoever may read the pods. Shared by the Stats RPC and the REST
    /// front's metrics.k8s.io.
    pub async fn pod_usage(&self, user: &crate::auth::UserInfo, r: StatsRequest) -> Result<Vec<PodStats>, Status> {
        let verb = if r.pod.is_empty() { "list" } else { "get" };
        self.allow(user, verb, "", &r.namespace, &r.pod)?;
        if r.pod.is_empty() {
            self.namespace_stats(&r.namespace).await
        } else {
            self.pod_stats(r).await
        }
    }

    /// Every node's own usage (or one node's), from its kubelet: readable
    /// by whoever may read the nodes. A node whose kubelet can't be
    /// reached is left out of a list.
    pub async fn node_usage(&self, user: &crate::auth::UserInfo, node: &str) -> Result<Vec<NodeStats>, Status> {
        let verb = if node.is_empty() { "list" } else { "get" };
        let access = Access { verb, kind: "Node", subresource: "", namespace: "", name: node };
        self.authorizer.authorize(user, &access).map_err(|denied| Status::from(Error::Denied(denied)))?;
        let names: Vec<String> = if node.is_empty() {
            let info = KindInfo::by_kind("Node").map_err(Error::from)?;
            let filter = Filter {
                key_prefix: info.key_prefix(None),
                labels: LabelSelector::everything(),
                fields: FieldSelector::default(),
            };
            let page = self.registry.list(info, &filter, 0, "", ListAt::Latest).await?;
            page.items
                .iter()
                .filter_map(|bytes| parse(bytes).ok())
                .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
                .collect()
        } else {
            vec![node.to_string()]
        };
        let mut nodes = Vec::new();
        for name in names {
            let result = async {
                let target =
                    Target { endpoint: self.node_endpoint(&name).await?, node: name.clone(), container: String::new() };
                let mut request = Request::new(StatsRequest { nodes: true, ..Default::default() });
                skiff_telemetry::inject_trace_context(request.metadata_mut());
                let reply = self.kubelet(&target)?.stats(request).await.map_err(|s| from_kubelet(&target, s))?;
                Ok::<_, Status>(reply.into_inner().nodes)
            }
            .await;
            match result {
                Ok(stats) => nodes.extend(stats.into_iter().map(|n| NodeStats { name: name.clone(), ..n })),
                Err(status) if !node.is_empty() => return Err(status),
                Err(status) => {
                    tracing::warn!(node = %name, error = %status.message(), "no stats from the node's kubelet")
                }
            }
        }
        Ok(nodes)
    }
}

#[tonic::async_trait]
impl PodProxy for PodProxyService {
    type LogsStream = BoxStream<LogChunk>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let started = Instant::now();
        let user = crate::auth::caller(&req)?;
        let (meta, _, mut r) = req.into_parts();
        let span = tracing::info_span!("rpc", method = "Logs", kind = "Pod");
        skiff_telemetry::set_remote_parent(&span, &meta);
        let result = async {
            self.allow(&user, "get", "log", &r.namespace, &r.pod)?;
            let target = self.resolve(&r.namespace, &r.pod, &r.container).await?;
            r.container = target.container.clone();
            let mut request = Request::new(r);
            skiff_telemetry::inject_trace_context(request.metadata_mut());
            let reply = self.kubelet(&target)?.logs(request).await.map_err(|s| from_kubelet(&target, s))?;
            Ok::<_, Status>(Response::new(self.until_shutdown(reply.into_inner())))
        }
        .instrument(span)
        .await;
        self.observe("Logs", started, &result);
        result
    }

    type ExecStream = BoxStream<ExecOutput>;

    async fn exec(&self, req: Request<Streaming<ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        let user = crate::auth::caller(&req)?;
        let (meta, _, mut inbound) = req.into_parts();
        let start = match inbound.next().await {
            Some(Ok(ExecInput { input: Some(exec_input::Input::Start(start)) })) => start,
            Some(Err(status)) => return Err(status),
            _ => return Err(Error::BadRequest("the first exec message must be the start".into()).into()),
        };
        // The session's input ends where the caller's stream does or fails.
        let inbound = tokio_stream::StreamExt::map_while(inbound, Result::ok);
        self.exec_session(user, meta, start, inbound).await.map(Response::new)
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let started = Instant::now();
        let user = crate::auth::caller(&req)?;
        let (meta, _, r) = req.into_parts();
        let span = tracing::info_span!("rpc", method = "Stats", kind = "Pod");
        skiff_telemetry::set_remote_parent(&span, &meta);
        let result = async {
            if r.nodes {
                let nodes = self.node_usage(&user, "").await?;
                return Ok(Response::new(StatsReply { pods: Vec::new(), nodes }));
            }
            let pods = self.pod_usage(&user, r).await?;
            Ok::<_, Status>(Response::new(StatsReply { pods, nodes: Vec::new() }))
        }
        .instrument(span)
        .await;
        self.observe("Stats", started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_only_container_is_the_default() {
        let pod = json!({"spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(pick_container(&pod, "web", "").unwrap(), "app");
        assert_eq!(pick_container(&pod, "web", "init").unwrap(), "init");
        let err = pick_container(&pod, "web", "nope").unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.to_string(), "container \"nope\" is not valid for pod \"web\"");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let err = pick_container(&two, "web", "").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.to_string(), "a container name must be specified for pod \"web\", choose one of: [a b]");
    }

    #[test]
    fn kubelet_endpoint_is_the_internal_ip_and_advertised_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        }});
        assert_eq!(kubelet_endpoint(&node, "http").unwrap(), "http://10.0.0.5:10250");
        let v6 = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "fd00::5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        }});
        assert_eq!(kubelet_endpoint(&v6, "https").unwrap(), "https://[fd00::5]:10250");
        let no_port = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}});
        assert!(kubelet_endpoint(&no_port, "http").unwrap_err().contains("no kubelet port"));
        let no_ip = json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert!(kubelet_endpoint(&no_ip, "http").unwrap_err().contains("no InternalIP"));
    }

    #[tokio::test]
    async fn channels_are_kept_per_node_and_endpoint() {
        let kubelets = Kubelets::default();
        kubelets.channel("n1", "http://127.0.0.1:1").unwrap();
        kubelets.channel("n1", "http://127.0.0.1:1").unwrap();
        kubelets.channel("n2", "http://127.0.0.1:2").unwrap();
        assert_eq!(kubelets.channels.lock().unwrap().len(), 2);
        kubelets.channel("n1", "http://127.0.0.1:3").unwrap();
        assert_eq!(kubelets.channels.lock().unwrap()["n1"].0, "http://127.0.0.1:3");
    }
}
