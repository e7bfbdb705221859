//! Services of type LoadBalancer, served as k3s' ServiceLB serves them:
//! each gets an address from `--lb-address-pool` where all its ports are
//! free (Services share an address on different ports), and a TCP or UDP
//! listener per port there that forwards to the Service's ready endpoints.
//!
//! - Allocation is by age: older Services keep what they hold; an address
//!   once published in status is kept while it stays in the pool. A
//!   Service that fits nowhere stays `<pending>` with a Warning Event.
//! - [`LoadBalancers::sync`] runs after each batch of informer changes: it
//!   starts and stops listeners to match, and points running ones at the
//!   current endpoints (connections open keep the endpoint they have).
//! - Status is written by [`LbStatus`], a reconciler on the runner, so a
//!   lost write is retried with back-off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, PortStatus, Service, ServiceStatus};
use skiff_client::{key_of, Action, Changes, Client, EventRecorder, EventType, Reconcile, Store, WorkQueue};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::balance::{Endpoints, Peers};
use crate::routes::ready_addrs;
use crate::settings::{Balance, Settings};
use crate::status::COMPONENT;

/// A connection to an endpoint that takes longer than this fails over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoints tried per TCP connection.
const MAX_TRIES: usize = 3;
/// A UDP client quiet for this long loses its upstream socket.
const UDP_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One listening socket: address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listen {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

/// What a listener serves: a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    service: String,
    port_name: String,
}

struct Running {
    target: Target,
    endpoints: Arc<ArcSwap<Endpoints>>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The caches LoadBalancer Services are served from.
#[derive(Clone)]
pub struct LbStores {
    pub services: Store<Service>,
    pub endpoints: Store<k8s_openapi::api::core::v1::Endpoints>,
}

pub struct LoadBalancers {
    pool: Vec<IpAddr>,
    stores: LbStores,
    recorder: EventRecorder,
    peers: Peers,
    running: Mutex<BTreeMap<Listen, Running>>,
    /// The address each LoadBalancer Service holds (`None`: pending).
    allocated: Arc<Mutex<HashMap<String, Option<IpAddr>>>>,
    /// Services told they fit nowhere, so it is told once.
    reported: Mutex<HashSet<String>>,
    status_queue: WorkQueue<String>,
}

impl LoadBalancers {
    pub fn new(pool: Vec<IpAddr>, stores: LbStores, client: Client, status_queue: WorkQueue<String>) -> Self {
        Self {
            pool,
            stores,
            recorder: EventRecorder::new(client, COMPONENT),
            peers: Peers::default(),
            running: Mutex::default(),
            allocated: Arc::default(),
            reported: Mutex::default(),
            status_queue,
        }
    }

    pub fn status(&self, client: Client) -> LbStatus {
        LbStatus { client, services: self.stores.services.clone(), allocated: self.allocated.clone() }
    }

    pub fn subscribe(&self) -> Changes {
        Changes::new().watch(self.stores.services.subscribe()).watch(self.stores.endpoints.subscribe())
    }

    /// Re-syncs after every batch of changes until `shutdown` resolves.
    pub async fn run(self, mut changes: Changes, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.sync().await;
        while changes.changed_before(&mut shutdown).await {
            self.sync().await;
        }
        self.running.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Allocates addresses, then makes the listeners match.
    pub async fn sync(&self) {
        let mut services: Vec<Arc<Service>> =
            self.stores.services.list().into_iter().filter(|s| is_load_balancer(s)).collect();
        services.sort_by_key(|s| (s.metadata.creation_timestamp.clone(), key_of(s.as_ref())));
        let held = self.allocated.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let allocation = allocate(&self.pool, &services, &held);

        let mut desired: BTreeMap<Listen, Target> = BTreeMap::new();
        let mut unplaced = Vec::new();
        for svc in &services {
            let key = key_of(svc.as_ref());
            match allocation.get(&key).copied().flatten() {
                Some(ip) => {
                    for (port, protocol, port_name) in ports(svc) {
                        let listen = Listen { addr: SocketAddr::new(ip, port), protocol };
                        desired.insert(listen, Target { service: key.clone(), port_name });
                    }
                }
                None => unplaced.push(svc.clone()),
            }
        }
        let failed = self.reconcile_listeners(&desired);

        self.publish(&services, &allocation, &failed);
        self.report_unplaced(&unplaced).await;
    }

    /// Records what each Service holds, and queues those whose status must
    /// change.
    fn publish(
        &self,
        services: &[Arc<Service>],
        allocation: &HashMap<String, Option<IpAddr>>,
        failed: &HashSet<String>,
    ) {
        let mut allocated = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::mem::take(&mut *allocated);
        for svc in services {
            let key = key_of(svc.as_ref());
            let ip = allocation.get(&key).copied().flatten().filter(|_| !failed.contains(&key));
            allocated.insert(key.clone(), ip);
            if before.get(&key) != Some(&ip) || published_ip(svc) != ip {
                self.status_queue.add(key);
            }
        }
    }

    /// Starts, stops and re-points listeners; returns the Services one of
    /// whose listeners could not be started.
    fn reconcile_listeners(&self, desired: &BTreeMap<Listen, Target>) -> HashSet<String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|listen, r| desired.get(listen) == Some(&r.target));
        let mut failed = HashSet::new();
        for (listen, target) in desired {
            let endpoints = self.endpoints_of(target);
            if let Some(r) = running.get(listen) {
                r.endpoints.store(Arc::new(endpoints));
                continue;
            }
            let endpoints = Arc::new(ArcSwap::from_pointee(endpoints));
            match start_listener(*listen, endpoints.clone()) {
                Ok(task) => {
                    tracing::info!(listen = %listen.addr, protocol = ?listen.protocol, service = %target.service, "load balancer listening");
                    running.insert(*listen, Running { target: target.clone(), endpoints, task });
                }
                Err(e) => {
                    tracing::warn!(listen = %listen.addr, service = %target.service, error = %e, "load balancer cannot listen");
                    failed.insert(target.service.clone());
                }
            }
        }
        drop(running);
        self.peers.prune();
        failed
    }

    fn endpoints_of(&self, target: &Target) -> Endpoints {
        let addrs = self.stores.endpoints.get(&target.service).map(|e| ready_addrs(&e, &target.port_name));
        Endpoints::new(addrs.unwrap_or_default(), &self.peers)
    }

    async fn report_unplaced(&self, unplaced: &[Arc<Service>]) {
        let fresh: Vec<Arc<Service>> = {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            let now: HashSet<String> = unplaced.iter().map(|s| key_of(s.as_ref())).collect();
            let fresh = unplaced.iter().filter(|s| !reported.contains(&key_of(s.as_ref()))).cloned().collect();
            *reported = now;
            fresh
        };
        for svc in fresh {
            let message = format!(
                "no address in the pool ({}) has all of the Service's ports free",
                self.pool.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
            );
            tracing::warn!(service = %key_of(svc.as_ref()), %message, "load balancer pending");
            self.recorder.report(svc.as_ref(), EventType::Warning, "AllocationFailed", &message).await;
        }
    }
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The Service's ports: (port, protocol, name); SCTP is not served.
fn ports(svc: &Service) -> Vec<(u16, Protocol, String)> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => return None,
            };
            Some((u16::try_from(p.port).ok()?, protocol, p.name.clone().unwrap_or_default()))
        })
        .collect()
}

fn published_ip(svc: &Service) -> Option<IpAddr> {
    let ingress = svc.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?;
    ingress.first()?.ip.as_deref()?.parse().ok()
}

/// Gives each Service an address of `pool` where its ports are free.
/// Services keep what they hold (`held`, else what their status
/// publishes) before any other is placed: creation times tie within a
/// second, and a newcomer must never take a working address away. Then,
/// oldest first, `spec.loadBalancerIP` if in the pool, else the first
/// address that fits.
pub fn allocate(
    pool: &[IpAddr],
    services: &[Arc<Service>],
    held: &HashMap<String, Option<IpAddr>>,
) -> HashMap<String, Option<IpAddr>> {
    let mut taken: HashSet<(IpAddr, u16, Protocol)> = HashSet::new();
    let mut out = HashMap::new();
    let fits = |ip: &IpAddr, wanted: &[(u16, Protocol, String)], taken: &HashSet<(IpAddr, u16, Protocol)>| {
        pool.contains(ip) && wanted.iter().all(|(port, proto, _)| !taken.contains(&(*ip, *port, *proto)))
    };
    let holding = |svc: &Service| held.get(&key_of(svc)).copied().flatten().or_else(|| published_ip(svc));
    for svc in services {
        let wanted = ports(svc);
        if let Some(ip) = holding(svc).filter(|ip| fits(ip, &wanted, &taken)) {
            taken.extend(wanted.iter().map(|(port, proto, _)| (ip, *port, *proto)));
            out.insert(key_of(svc.as_ref()), Some(ip));
        }
    }
    let placed: HashSet<String> = out.keys().cloned().collect();
    for svc in services.iter().filter(|s| !placed.contains(&key_of(s.as_ref()))) {
        let wanted = ports(svc);
        let requested: Option<IpAddr> =
            svc.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref()).and_then(|ip| ip.parse().ok());
        let choice = match requested {
            // Asked for one address: that or nothing.
            Some(ip) => Some(ip).filter(|ip| fits(ip, &wanted, &taken)),
            None => pool.iter().copied().find(|ip| fits(ip, &wanted, &taken)),
        };
        if let Some(ip) = choice {
            taken.extend(wanted.iter().map(|(port, proto, _)| (ip, *port, *proto)));
        }
        out.insert(key_of(svc.as_ref()), choice);
    }
    out
}

fn start_listener(listen: Listen, endpoints: Arc<ArcSwap<Endpoints>>) -> std::io::Result<JoinHandle<()>> {
    match listen.protocol {
        Protocol::Tcp => {
            let std = std::net::TcpListener::bind(listen.addr)?;
            std.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std)?;
            Ok(tokio::spawn(serve_tcp(listener, endpoints)))
        }
        Protocol::Udp => {
            let std = std::net::UdpSocket::bind(listen.addr)?;
            std.set_nonblocking(true)?;
            let socket = Arc::new(UdpSocket::from_std(std)?);
            Ok(tokio::spawn(serve_udp(socket, endpoints)))
        }
    }
}

async fn serve_tcp(listener: TcpListener, endpoints: Arc<ArcSwap<Endpoints>>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(forward_tcp(client, endpoints.load_full()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a load-balancer connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects to an endpoint (another on failure, up to [`MAX_TRIES`]) and
/// copies both ways until either side closes.
async fn forward_tcp(mut client: TcpStream, endpoints: Arc<Endpoints>) {
    let mut tried = Vec::new();
    while tried.len() < MAX_TRIES {
        let Some((addr, state)) = endpoints.pick(&Balance::RoundRobin, None, &tried) else { break };
        tried.push(addr);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(mut upstream)) => {
                state.record_success();
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            _ => {
                // No Ingress annotations here: nginx's defaults, as for Ingresses.
                let defaults = Settings::default();
                state.record_failure(defaults.max_fails, defaults.fail_timeout);
                tracing::debug!(endpoint = %addr, "load-balancer connect failed");
            }
        }
    }
    tracing::debug!(tried = tried.len(), "no endpoint took the connection");
}

/// Each UDP client's socket towards its endpoint, and when it was last heard.
type UdpSessions = Arc<Mutex<HashMap<SocketAddr, (Arc<UdpSocket>, Instant)>>>;

/// UDP: each client address gets a socket of its own towards one endpoint,
/// so replies find their way back; it is dropped after [`UDP_IDLE`].
async fn serve_udp(socket: Arc<UdpSocket>, endpoints: Arc<ArcSwap<Endpoints>>) {
    let sessions: UdpSessions = Arc::default();
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else { continue };
        let existing = {
            let mut s = sessions.lock().unwrap_or_else(|e| e.into_inner());
            s.get_mut(&client).map(|(up, seen)| {
                *seen = Instant::now();
                up.clone()
            })
        };
        let upstream = match existing {
            Some(up) => up,
            None => match udp_session(&socket, client, &endpoints.load(), sessions.clone()).await {
                Some(up) => up,
                None => continue,
            },
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

async fn udp_session(
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    endpoints: &Endpoints,
    sessions: UdpSessions,
) -> Option<Arc<UdpSocket>> {
    let (addr, _) = endpoints.pick(&Balance::RoundRobin, None, &[])?;
    let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let upstream = Arc::new(UdpSocket::bind(bind).await.ok()?);
    upstream.connect(addr).await.ok()?;
    sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(client, (upstream.clone(), Instant::now()));
    let (reply_to, from) = (socket.clone(), upstream.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            match tokio::time::timeout(UDP_IDLE, from.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let _ = reply_to.send_to(&buf[..n], client).await;
                }
                _ => {
                    let mut s = sessions.lock().unwrap_or_else(|e| e.into_inner());
                    let idle = s.get(&client).is_none_or(|(_, seen)| seen.elapsed() >= UDP_IDLE);
                    if idle {
                        s.remove(&client);
                        return;
                    }
                }
            }
        }
    });
    Some(upstream)
}

/// Writes `status.loadBalancer` of LoadBalancer Services from what
/// [`LoadBalancers`] allocated.
pub struct LbStatus {
    client: Client,
    services: Store<Service>,
    allocated: Arc<Mutex<HashMap<String, Option<IpAddr>>>>,
}

impl Reconcile for LbStatus {
    const NAME: &'static str = "service-lb";
    type Error = skiff_client::Error;

    async fn reconcile(&self, key: &str) -> Result<Action, Self::Error> {
        let Some(svc) = self.services.get(key).filter(|s| is_load_balancer(s)) else { return Ok(Action::done()) };
        let ip = self.allocated.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied().flatten();
        let ingress = ip.map(|ip| {
            let ports = ports(&svc)
                .into_iter()
                .map(|(port, protocol, _)| PortStatus {
                    port: i32::from(port),
                    protocol: if protocol == Protocol::Udp { "UDP" } else { "TCP" }.to_string(),
                    error: None,
                })
                .collect();
            vec![LoadBalancerIngress { ip: Some(ip.to_string()), ports: Some(ports), ..Default::default() }]
        });
        let desired = LoadBalancerStatus { ingress };
        let current = svc.status.as_ref().and_then(|s| s.load_balancer.clone()).unwrap_or_default();
        if current == desired || (current.ingress.as_ref().is_none_or(Vec::is_empty) && desired.ingress.is_none()) {
            return Ok(Action::done());
        }
        let mut updated = (*svc).clone();
        let status = updated.status.get_or_insert_with(ServiceStatus::default);
        status.load_balancer = Some(desired);
        let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
        self.client.api::<Service>(namespace).update_status(&updated).await?;
        Ok(Action::done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lb(name: &str, created: &str, ports: serde_json::Value, extra: serde_json::Value) -> Arc<Service> {
        let mut spec = json!({"type": "LoadBalancer", "ports": ports});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "demo", "creationTimestamp": created},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn services_share_an_address_on_different_ports_and_wait_when_none_fits() {
        let pool = [ip("192.0.2.1"), ip("192.0.2.2")];
        let web = lb("web", "2026-01-01T00:00:00Z", json!([{"port": 80}, {"port": 443}]), json!({}));
        let dns = lb("dns", "2026-01-02T00:00:00Z", json!([{"port": 53, "protocol": "UDP"}]), json!({}));
        let web2 = lb("web2", "2026-01-03T00:00:00Z", json!([{"port": 80}]), json!({}));
        let web3 = lb("web3", "2026-01-04T00:00:00Z", json!([{"port": 80}]), json!({}));
        let got = allocate(&pool, &[web, dns, web2, web3], &HashMap::new());
        assert_eq!(got["demo/web"], Some(ip("192.0.2.1")));
        assert_eq!(got["demo/dns"], Some(ip("192.0.2.1")), "another port on the same address");
        assert_eq!(got["demo/web2"], Some(ip("192.0.2.2")), "port 80 is taken on the first");
        assert_eq!(got["demo/web3"], None, "port 80 is taken everywhere");
    }

    #[test]
    fn a_published_address_is_kept_and_a_requested_one_honoured() {
        let pool = [ip("192.0.2.1"), ip("192.0.2.2")];
        let mut kept = (*lb("kept", "2026-01-02T00:00:00Z", json!([{"port": 80}]), json!({}))).clone();
        kept.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress { ip: Some("192.0.2.2".into()), ..Default::default() }]),
            }),
            ..Default::default()
        });
        let asks = lb("asks", "2026-01-03T00:00:00Z", json!([{"port": 8080}]), json!({"loadBalancerIP": "192.0.2.2"}));
        let outside =
            lb("outside", "2026-01-04T00:00:00Z", json!([{"port": 9090}]), json!({"loadBalancerIP": "10.0.0.1"}));
        let got = allocate(&pool, &[Arc::new(kept), asks, outside], &HashMap::new());
        assert_eq!(got["demo/kept"], Some(ip("192.0.2.2")));
        assert_eq!(got["demo/asks"], Some(ip("192.0.2.2")));
        assert_eq!(got["demo/outside"], None, "an address outside the pool is never given");
    }

    #[test]
    fn a_newcomer_never_takes_a_held_address_even_when_it_sorts_first() {
        let pool = [ip("192.0.2.1")];
        // Same second: "clash" sorts before "edge", yet edge holds the port.
        let edge = lb("edge", "2026-01-01T00:00:00Z", json!([{"port": 80}]), json!({}));
        let clash = lb("clash", "2026-01-01T00:00:00Z", json!([{"port": 80}]), json!({}));
        let held = HashMap::from([("demo/edge".to_string(), Some(ip("192.0.2.1")))]);
        let got = allocate(&pool, &[clash, edge], &held);
        assert_eq!(got["demo/edge"], Some(ip("192.0.2.1")));
        assert_eq!(got["demo/clash"], None);
    }
}
