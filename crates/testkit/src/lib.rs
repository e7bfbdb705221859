//! The one way to start a skiff cluster: real etcd and skiff services as
//! child processes, with their state, logs and pid files under one
//! directory. Integration tests, benchmarks and `skiffctl up` all use it.
//!
//! [`runtime`] adds the container side of a node: a local registry with
//! test images built here, and containerd (CRI) pulling from it.
//!
//! Services are the binaries cargo built next to the running executable (or
//! in `$SKIFF_BIN_DIR`): run `cargo build --bins` before the tests.
#![forbid(unsafe_code)]

pub mod compose;
mod dns;
pub mod netns;
mod network;
pub mod otlp;
mod pki;
mod process;
pub mod runtime;
pub mod units;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dns::{bridge_gateway, DNS_SERVICE_IP};
pub use network::{Network, NetworkOptions, NodeHost};
pub use pki::{identity_of, ClusterPki, EtcdTls, Identity, ADMIN, NODES_GROUP};
pub use process::{running, stop_detached, Process};
pub use runtime::{Runtime, RuntimeOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name} not found in {dir}: build it first with `cargo build --bins` (or set SKIFF_BIN_DIR)")]
    BinaryMissing { name: String, dir: String },
    #[error("{what} at {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited before it was ready ({status}); last log lines:\n{log_tail}")]
    Exited { name: String, status: String, log_tail: String },
    #[error("{name} was not ready after {timeout:?}; last log lines:\n{log_tail}")]
    NotReady { name: String, timeout: Duration, log_tail: String },
    #[error("{what}: `{command}` failed ({status}): {stderr}")]
    Command { what: String, command: String, status: String, stderr: String },
    #[error("CRI call failed: {what}")]
    Cri {
        what: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error(transparent)]
    Client(#[from] skiff_client::Error),
    #[error("a kubelet needs a container runtime: start the cluster with ClusterOptions.runtime")]
    NoRuntime,
    #[error("the cluster's certificates at {path}: {reason}")]
    Pki { path: String, reason: String },
    #[error("etcd's port {port} is already in use {by}")]
    EtcdPortTaken { port: u16, by: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Ports handed out by [`free_port`]: below Linux's ephemeral range
/// (32768–60999), so no outgoing connection takes one between the check
/// and the server's bind.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// The etcd client and peer ports of the local cluster `skiffctl up`
/// starts: fixed, so that a second `up` finds the first. [`free_port`]
/// never hands them out.
pub const LOCAL_CLUSTER_ETCD_PORTS: (u16, u16) = (23790, 23800);

/// A port free on loopback for TCP and UDP that no other caller in this
/// process has been given. A port that the kernel handed out for binding
/// port 0 could be handed out again at once (even to the same cluster, as
/// etcd's client and peer port), or taken by an outgoing connection;
/// a counter outside the ephemeral range has neither race. Each process
/// starts at its own offset, so concurrent test binaries rarely meet, and
/// a port something already listens on is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = TEST_PORTS.start + offset as u16;
        if port == LOCAL_CLUSTER_ETCD_PORTS.0 || port == LOCAL_CLUSTER_ETCD_PORTS.1 {
            continue;
        }
        let loopback = std::net::Ipv4Addr::LOCALHOST;
        if TcpListener::bind((loopback, port)).is_ok() && std::net::UdpSocket::bind((loopback, port)).is_ok() {
            return port;
        }
    }
}

/// Fixed etcd ports (`skiffctl up`'s) must be free: an etcd already there,
/// another state dir's, would answer this cluster's readiness probe, and
/// this cluster would then write into that one.
fn ensure_etcd_ports_free((client, peer): (u16, u16)) -> Result<()> {
    for port in [client, peer] {
        if TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).is_err() {
            let by = match process::etcd_data_dir_on(port) {
                Some(data) => {
                    let state = data.parent().unwrap_or(&data).display().to_string();
                    format!("by the cluster of state dir {state} (stop it with `skiffctl down --state-dir {state}`)")
                }
                None => "by another process".to_string(),
            };
            return Err(Error::EtcdPortTaken { port, by });
        }
    }
    Ok(())
}

/// Where cargo put the skiff binaries: `$SKIFF_BIN_DIR`, else the folder of
/// the running executable (its parent for test binaries in `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKIFF_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = bin_dir();
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BinaryMissing { name: name.into(), dir: dir.display().to_string() })
    }
}

/// Where a started service's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    /// The cluster's PKI: a client config (and a kubelet's serving
    /// certificate) issued here.
    Issued,
    /// Its own flags say (a joining kubelet's bootstrap).
    OwnFlags,
}

/// Stops everything a detached cluster (`skiffctl up`) left under
/// `state_dir`: pods and containerd (through CRI, so CNI releases what it
/// holds), the services, etcd, the registry, and a networked cluster's host
/// namespaces last. Returns what it stopped; empty when nothing ran.
pub async fn stop_detached_cluster(state_dir: &Path) -> Result<Vec<String>> {
    let mut stopped = Vec::new();
    if runtime::stop_detached_runtime(state_dir).await? {
        stopped.push("registry and local containerd".to_string());
    }
    stopped.extend(network::stop_detached_hosts(state_dir).await?);
    stopped.extend(stop_detached(state_dir)?);
    if network::remove_detached_lan(state_dir) {
        stopped.push("host namespaces".to_string());
    }
    Ok(stopped)
}

/// How long [`eventually`] waits: generous, since tests run in parallel on
/// small machines and assert that things happen, never how fast.
pub const EVENTUALLY: Duration = Duration::from_secs(90);

/// Polls `check` every 200ms until it yields a value. Panics naming `what`
/// after [`EVENTUALLY`]: for tests.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How to start a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Keep state here instead of a temp dir that is removed on drop.
    pub state_dir: Option<PathBuf>,
    /// Leave the processes running when the `Cluster` is dropped (for
    /// `skiffctl up`); `stop_detached(state_dir)` stops them.
    pub detach: bool,
    /// Fixed address for the apiserver's gRPC API (default: a free port).
    pub apiserver_listen: Option<SocketAddr>,
    /// Fixed port for the apiserver on its default address (loopback, or
    /// the LAN's gateway in a networked cluster).
    pub apiserver_port: Option<u16>,
    /// Fixed loopback ports for etcd's clients and peers (default: free ports).
    pub etcd_ports: Option<(u16, u16)>,
    /// Fixed port for the apiserver's Kubernetes REST API, on the gRPC
    /// API's address (default: a free port).
    pub rest_port: Option<u16>,
    /// Extra apiserver flags.
    pub apiserver_args: Vec<String>,
    /// Serve the API without TLS or authentication, everything allowed
    /// (as clusters did before skiff had security). Off by default: the
    /// API is TLS, every component has its own client certificate, and
    /// RBAC decides.
    pub insecure: bool,
    /// Also start a registry with the test images and containerd (CRI):
    /// see [`Cluster::runtime`]. None (the default) keeps the cluster cheap.
    pub runtime: Option<RuntimeOptions>,
    /// Start a networked cluster instead: hosts as network namespaces, each
    /// with containerd, a kubelet and skiff-overlay, plus the scheduler,
    /// controller-manager and skiff-dns (see [`network`]). The apiserver
    /// then listens on the hosts' LAN.
    pub network: Option<NetworkOptions>,
    /// Variables added to the environment of every skiff process of the
    /// cluster (apiserver, services, [`Cluster::skiffctl_command`]), such as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub env: Vec<(String, String)>,
}

/// etcd, an apiserver and any services started on them, running.
///
/// Fields drop in order: services first, then containerd and the registry
/// (or the hosts of a networked cluster), the apiserver, etcd, and last the temp dir they kept their state in.
pub struct Cluster {
    services: Vec<Service>,
    runtime: Option<Runtime>,
    network: Option<Network>,
    apiserver: Option<Process>,
    pub etcd: Process,
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    detach: bool,
    etcd_endpoint: String,
    /// How to reach etcd when it takes only TLS clients.
    etcd_tls: Option<EtcdTls>,
    apiserver_listen: SocketAddr,
    /// The Kubernetes REST API's address (kubectl's server).
    rest_listen: SocketAddr,
    apiserver_metrics: SocketAddr,
    apiserver_args: Vec<String>,
    /// The CA and identities; None for an insecure cluster.
    pki: Option<ClusterPki>,
    /// The administrator's client config, and its file (None when insecure).
    admin: skiff_client::ClientConfig,
    admin_file: Option<PathBuf>,
    env: Vec<(String, String)>,
}

/// A skiff service (scheduler, controller-manager, kubelet…) started by
/// [`Cluster::start_service`].
pub struct Service {
    pub id: String,
    pub process: Process,
    /// Its /metrics, /healthz and /readyz.
    pub metrics: SocketAddr,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// etcd and an apiserver in a fresh temp dir, stopped on drop.
    pub async fn start() -> Result<Self> {
        Self::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(options: ClusterOptions) -> Result<Self> {
        let (temp, dir) = match options.state_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new().prefix("skiff-").tempdir().map_err(|source| Error::Io {
                    what: "creating a temp dir",
                    path: "$TMPDIR".into(),
                    source,
                })?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        for sub in ["logs", "pids", "etcd"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| Error::Io {
                what: "creating",
                path: p.display().to_string(),
                source,
            })?;
        }
        if let Some(ports) = options.etcd_ports {
            ensure_etcd_ports_free(ports)?;
        }
        let lan = options.network.as_ref().map(|_| netns::Lan::create()).transpose()?;
        let listen_ip = lan.as_ref().map_or(std::net::Ipv4Addr::LOCALHOST, netns::Lan::gateway);
        let apiserver_listen = options
            .apiserver_listen
            .unwrap_or_else(|| SocketAddr::from((listen_ip, options.apiserver_port.unwrap_or_else(free_port))));
        let rest_listen = SocketAddr::new(apiserver_listen.ip(), options.rest_port.unwrap_or_else(free_port));
        let apiserver_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (pki, admin, admin_file) = if options.insecure {
            (None, skiff_client::ClientConfig::insecure(format!("http://{apiserver_listen}")), None)
        } else {
            let names = [apiserver_listen.ip().to_string(), "127.0.0.1".into(), "localhost".into()];
            let pki = ClusterPki::open(&dir.join("pki"), &format!("https://{apiserver_listen}"), &names)?;
            let (file, admin) = pki.client_config("admin", ADMIN)?;
            (Some(pki), admin, Some(file))
        };
        // A secure cluster's etcd takes only TLS clients with a certificate
        // of the cluster CA; its health is served apart, over plain HTTP.
        let etcd_tls = pki.as_ref().map(|pki| pki.etcd_tls(&[])).transpose()?;
        let (client_port, peer_port) = options.etcd_ports.unwrap_or_else(|| (free_port(), free_port()));
        let scheme = if etcd_tls.is_some() { "https" } else { "http" };
        let etcd_endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let etcd_health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut etcd_args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_endpoint}"),
            format!("--advertise-client-urls={etcd_endpoint}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            format!("--listen-metrics-urls=http://{etcd_health}"),
            "--logger=zap".to_string(),
            "--log-level=warn".to_string(),
        ];
        etcd_args.extend(etcd_tls.iter().flat_map(EtcdTls::etcd_args));
        let etcd_args: Vec<&str> = etcd_args.iter().map(String::as_str).collect();
        let etcd = Process::spawn("etcd", Path::new("etcd"), &etcd_args, &dir, options.detach)?;
        etcd.wait_http_ok(etcd_health, "/health", READY_TIMEOUT).await?;

        let mut cluster = Cluster {
            services: Vec::new(),
            runtime: None,
            network: None,
            _temp: temp,
            dir,
            detach: options.detach,
            etcd,
            etcd_endpoint,
            etcd_tls,
            apiserver: None,
            apiserver_listen,
            rest_listen,
            apiserver_metrics,
            apiserver_args: options.apiserver_args,
            pki,
            admin,
            admin_file,
            env: options.env.clone(),
        };
        cluster.start_apiserver().await?;
        if let Some(runtime) = &options.runtime {
            cluster.runtime = Some(Runtime::start(&cluster.dir, runtime, cluster.detach).await?);
        }
        if let (Some(lan), Some(network)) = (lan, &options.network) {
            cluster.start_network(lan, network).await?;
        }
        Ok(cluster)
    }

    /// The registry and containerd, when [`ClusterOptions::runtime`] asked
    /// for them.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.as_ref()
    }

    pub fn runtime_mut(&mut self) -> Option<&mut Runtime> {
        self.runtime.as_mut()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn etcd_endpoint(&self) -> &str {
        &self.etcd_endpoint
    }

    /// A client of this cluster's etcd, as the apiserver reaches it (with
    /// its client certificate where etcd takes only TLS clients).
    pub async fn etcd_client(&self) -> Result<etcd_client::Client> {
        let options = self.etcd_tls.as_ref().map(EtcdTls::client_options).transpose()?;
        etcd_client::Client::connect([self.etcd_endpoint.as_str()], options).await.map_err(|e| Error::Io {
            what: "connecting to etcd",
            path: self.etcd_endpoint.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// `https://HOST:PORT` of the apiserver's gRPC API (`http://` for an
    /// insecure cluster).
    pub fn server(&self) -> String {
        self.admin.server.clone()
    }

    /// `https://HOST:PORT` of the apiserver's Kubernetes REST API, what
    /// kubectl and client libraries speak (`http://` for an insecure cluster).
    pub fn rest_server(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.rest_listen)
    }

    /// The REST API's address.
    pub fn rest_listen(&self) -> SocketAddr {
        self.rest_listen
    }

    /// Writes (or updates) the kubeconfig at `path` with a context `name`
    /// for this cluster's REST API as its administrator, made current.
    pub fn write_kubeconfig(&self, path: &Path, name: &str) -> Result<()> {
        self.admin.merge_into_kubeconfig(path, name, &self.rest_server()).map_err(|e| Error::Io {
            what: "writing the kubeconfig",
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })
    }

    /// The cluster's CA and identities; None for an insecure cluster.
    pub fn pki(&self) -> Option<&ClusterPki> {
        self.pki.as_ref()
    }

    /// The administrator's client config (what `skiffctl up` saves).
    pub fn admin_config(&self) -> &skiff_client::ClientConfig {
        &self.admin
    }

    /// The client config of the kubelet of node `name`
    /// ([`ClusterPki::node_client_config`]); None for an insecure cluster.
    pub fn kubeconfig_for_node(&self, name: &str) -> Result<Option<PathBuf>> {
        let Some(pki) = &self.pki else { return Ok(None) };
        Ok(Some(pki.node_client_config(name)?.0))
    }

    /// The client config file `binary` is started with, written on first
    /// use; None for an insecure cluster.
    pub fn kubeconfig_for(&self, binary: &str) -> Result<Option<PathBuf>> {
        let Some(pki) = &self.pki else { return Ok(None) };
        let identity = identity_of(binary);
        // The admin's was written at start; issuing it again for every
        // skiffctl run would rewrite files another run may be reading.
        if identity.user == ADMIN.user {
            return Ok(self.admin_file.clone());
        }
        Ok(Some(pki.client_config(binary, identity)?.0))
    }

    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().and_then(Process::pid)
    }

    /// Address of the apiserver's /metrics, /healthz and /readyz.
    pub fn apiserver_metrics(&self) -> SocketAddr {
        self.apiserver_metrics
    }

    /// The built `skiffctl`, pointed at this cluster as its administrator
    /// (and at nothing the environment names), for tests to add arguments.
    pub fn skiffctl_command(&self) -> Result<std::process::Command> {
        let mut command = std::process::Command::new(binary("skiffctl")?);
        command.arg("--server").arg(self.server()).env_remove("SKIFF_SERVER").env_remove("SKIFF_CONFIG");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(config) = self.kubeconfig_for("skiffctl")? {
            command.arg("--kubeconfig").arg(config);
        }
        Ok(command)
    }

    /// Runs the built `skiffctl` against this cluster, with `stdin` as its
    /// input, and returns what it printed and its exit status.
    pub fn skiffctl(&self, args: &[&str], stdin: Option<&str>) -> Result<std::process::Output> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .skiffctl_command()?
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { name: "skiffctl".into(), source })?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.unwrap_or("").as_bytes());
        }
        child.wait_with_output().map_err(|source| Error::Spawn { name: "skiffctl".into(), source })
    }

    pub fn client(&self) -> skiff_client::Client {
        skiff_client::Client::connect(&self.admin).expect("the cluster's own client config is valid")
    }

    /// Starts the apiserver (again) on the same addresses and waits for
    /// /readyz.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        let bin = binary("skiff-apiserver")?;
        let mut args = vec![
            format!("--etcd-endpoints={}", self.etcd_endpoint),
            format!("--listen={}", self.apiserver_listen),
            format!("--rest-listen={}", self.rest_listen),
            format!("--metrics-listen={}", self.apiserver_metrics),
        ];
        match &self.pki {
            Some(pki) => args.extend(pki.apiserver_args()),
            None => args.extend(["--authorization-mode=AlwaysAllow".into(), "--anonymous-auth".into()]),
        }
        args.extend(self.etcd_tls.iter().flat_map(EtcdTls::apiserver_args));
        args.extend(self.apiserver_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Process::spawn_with_env("skiff-apiserver", &bin, &args, &self.env, &self.dir, self.detach)?;
        p.wait_http_ok(self.apiserver_metrics, "/readyz", READY_TIMEOUT).await?;
        self.apiserver = Some(p);
        Ok(())
    }

    /// Stops the apiserver (SIGTERM, then SIGKILL after a grace period).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// Starts the skiff service `binary` against this cluster as `id` (its
    /// log is `logs/ID.log`), passing `--server` and `--metrics-listen` before
    /// `args`, and waits until its /healthz answers. Every skiff service
    /// takes those two flags.
    pub async fn start_service(&mut self, id: &str, binary: &str, args: &[String]) -> Result<SocketAddr> {
        self.spawn_service(None, id, binary, args, Credentials::Issued).await
    }

    /// [`Cluster::start_service`] inside `host` of a networked cluster, its
    /// metrics on the host's address. With `private_run` it gets its own
    /// /run/wireguard (see [`netns::Host::spawn`]).
    pub async fn start_service_in(
        &mut self,
        host: &netns::Host,
        id: &str,
        binary: &str,
        args: &[String],
        private_run: bool,
    ) -> Result<SocketAddr> {
        self.spawn_service(Some((host, private_run)), id, binary, args, Credentials::Issued).await
    }

    /// A kubelet for `node_name` that joins as a new machine would: with
    /// the bootstrap client config `bootstrap` (a token) and no
    /// certificate of its own, asking for its client and serving
    /// certificates (under `<dir>/join/NODE`). Returns once it serves
    /// /healthz, that is once it has its certificates; fails if it exits.
    pub async fn start_joining_kubelet(&mut self, node_name: &str, bootstrap: &Path) -> Result<SocketAddr> {
        let dir = self.dir.join("join").join(node_name);
        let mut args = self.local_kubelet_args(node_name, &dir.join("root"))?;
        args.extend([
            format!("--kubeconfig={}", dir.join("kubelet.yaml").display()),
            format!("--bootstrap-kubeconfig={}", bootstrap.display()),
            format!("--cert-dir={}", dir.join("pki").display()),
        ]);
        let id = format!("kubelet-{node_name}");
        self.spawn_service(None, &id, "skiff-kubelet", &args, Credentials::OwnFlags).await
    }

    async fn spawn_service(
        &mut self,
        host: Option<(&netns::Host, bool)>,
        id: &str,
        binary: &str,
        args: &[String],
        credentials: Credentials,
    ) -> Result<SocketAddr> {
        let bin = self::binary(binary)?;
        let ip = host.map_or(std::net::Ipv4Addr::LOCALHOST, |(h, _)| h.ip());
        let metrics = SocketAddr::from((ip, free_port()));
        let mut all = vec![format!("--server={}", self.server()), format!("--metrics-listen={metrics}")];
        // A kubelet for one node is that node; anything else is its binary's identity.
        let node = args.iter().find_map(|a| a.strip_prefix("--node-name=")).filter(|_| binary == "skiff-kubelet");
        let config = match (credentials, node) {
            (Credentials::OwnFlags, _) => None,
            (Credentials::Issued, Some(node)) => self.kubeconfig_for_node(node)?,
            (Credentials::Issued, None) => self.kubeconfig_for(binary)?,
        };
        if let Some(config) = config {
            all.push(format!("--kubeconfig={}", config.display()));
        }
        // Signs nodes' certificate requests (joining with a bootstrap token).
        if let (Some(pki), "skiff-controller-manager") = (&self.pki, binary) {
            all.push(format!("--cluster-signing-cert-file={}", pki.ca_file().display()));
            all.push(format!("--cluster-signing-key-file={}", pki.ca_key_file().display()));
        }
        if binary == "skiff-kubelet" && credentials == Credentials::Issued {
            match &self.pki {
                Some(pki) => all.extend(pki.kubelet_args(&format!("kubelet-{id}"), ip.into())?),
                None => all.extend(["--authorization-mode=AlwaysAllow".into(), "--anonymous-auth".into()]),
            }
        }
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let process = match host {
            Some((h, private_run)) => {
                h.spawn_with_env(id, &bin, &all, &self.env, &self.dir, private_run, self.detach)?
            }
            None => Process::spawn_with_env(id, &bin, &all, &self.env, &self.dir, self.detach)?,
        };
        process.wait_http_ok(metrics, "/healthz", READY_TIMEOUT).await?;
        self.services.push(Service { id: id.to_string(), process, metrics });
        Ok(metrics)
    }

    /// A whole cluster running real containers: a runtime (containerd, the
    /// registry), the control plane, and [`start_workers`](Self::start_workers)
    /// with one kubelet named `node_name`.
    pub async fn start_with_workers(node_name: &str) -> Result<Self> {
        let mut cluster = Self::start_with(ClusterOptions {
            runtime: Some(runtime::RuntimeOptions::default()),
            ..Default::default()
        })
        .await?;
        cluster.start_workers(node_name, &[]).await?;
        Ok(cluster)
    }

    /// The rest of a working cluster on this one's runtime: the scheduler,
    /// the controller-manager and a real kubelet named `node_name`, so that
    /// workloads applied to it run as containers.
    /// `controller_manager_flags` come after the testkit's own (shorter
    /// autoscaler periods in a test, say).
    pub async fn start_workers(&mut self, node_name: &str, controller_manager_flags: &[&str]) -> Result<()> {
        self.start_service("scheduler", "skiff-scheduler", &[]).await?;
        // local-path volumes in the cluster's own folder, not the host's.
        let mut flags = vec![format!("--local-path-root={}", self.dir.join("local-path").display())];
        flags.extend(controller_manager_flags.iter().map(|f| f.to_string()));
        self.start_service("controller-manager", "skiff-controller-manager", &flags).await?;
        self.start_kubelet(node_name, &[]).await?;
        Ok(())
    }

    /// Starts a real kubelet named `node_name` on this cluster's runtime
    /// (which must have been asked for), on loopback: the node's address is
    /// 127.0.0.1 and its kubelet API takes a free port. `extra` flags come
    /// last, so they can override (back-off times in tests, say).
    pub async fn start_kubelet(&mut self, node_name: &str, extra: &[String]) -> Result<SocketAddr> {
        let mut args = self.local_kubelet_args(node_name, &self.dir.join("kubelet"))?;
        args.extend(extra.iter().cloned());
        self.start_service("kubelet", "skiff-kubelet", &args).await
    }

    /// A kubelet's flags for a node on this cluster's runtime, on loopback.
    fn local_kubelet_args(&self, node_name: &str, root_dir: &Path) -> Result<Vec<String>> {
        let containerd = self.runtime().ok_or(Error::NoRuntime)?.containerd();
        Ok(vec![
            format!("--node-name={node_name}"),
            "--node-ip=127.0.0.1".to_string(),
            "--kubelet-port=0".to_string(),
            format!("--container-runtime-endpoint={}", containerd.endpoint()),
            format!("--pod-cidr={}", containerd.pod_cidr()),
            format!("--pod-log-dir={}", containerd.pod_log_dir().display()),
            format!("--root-dir={}", root_dir.display()),
        ])
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.id == id)
    }

    /// Stops service `id` gracefully (SIGTERM, then SIGKILL after 10s).
    pub fn stop_service(&mut self, id: &str) {
        if let Some(i) = self.services.iter().position(|s| s.id == id) {
            self.services.remove(i).process.stop(Duration::from_secs(10));
        }
    }

    /// Kills service `id` at once, as a crash would.
    pub fn kill_service(&mut self, id: &str) {
        if let Some(i) = self.services.iter().position(|s| s.id == id) {
            self.services.remove(i).process.kill();
        }
    }
}
