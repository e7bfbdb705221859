//! The host's links and routes as the overlay changes them ([`Links`]):
//! the WireGuard interface's address, MTU and routes, and a gateway's
//! routes via the nodes; and the real access to them over rtnetlink
//! ([`Netlink`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use skiff_api::cidr::Cidr;

use crate::Error;

/// The host's links and main routing table, as far as the mesh touches them.
#[async_trait::async_trait]
pub trait Links: Send + Sync + 'static {
    /// The index of link `name`, if it exists.
    async fn index(&self, name: &str) -> Result<Option<u32>, Error>;
    /// Sets the MTU and brings the link up.
    async fn up(&self, index: u32, mtu: u32) -> Result<(), Error>;
    /// Puts `addr/32` on the link (idempotent).
    async fn ensure_address(&self, index: u32, addr: Ipv4Addr) -> Result<(), Error>;
    /// Makes the main table's routes through link `index` exactly `want`.
    async fn sync_routes(&self, index: u32, want: &BTreeSet<Cidr>) -> Result<(), Error>;
    /// Makes the main table's routes of protocol [`GATEWAY_ROUTE_PROTOCOL`]
    /// exactly `want`: each CIDR via its next hop.
    async fn sync_gateway_routes(&self, want: &BTreeMap<Cidr, Ipv4Addr>) -> Result<(), Error>;
}

/// The routing protocol number a gateway's routes carry (`ip route show
/// proto 83`): how it tells its own routes from everyone else's, across
/// restarts, without a file of what it added.
pub const GATEWAY_ROUTE_PROTOCOL: u8 = 83;

/// A netlink connection in this process's network namespace.
pub struct Netlink {
    handle: Handle,
    _connection: tokio::task::JoinHandle<()>,
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| Error::Netlink { what: format!("{what}: {e}") }
}

impl Netlink {
    pub fn connect() -> Result<Self, Error> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::Netlink { what: format!("opening a netlink socket: {e}") })?;
        Ok(Self { handle, _connection: tokio::spawn(connection) })
    }
}

#[async_trait::async_trait]
impl Links for Netlink {
    async fn index(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            // The kernel answers ENODEV for a name it doesn't know.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(failed(format!("looking up link {name}"))(e)),
        }
    }

    async fn up(&self, index: u32, mtu: u32) -> Result<(), Error> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle.link().set(message).execute().await.map_err(failed("setting the link up"))
    }

    async fn ensure_address(&self, index: u32, addr: Ipv4Addr) -> Result<(), Error> {
        let request = self.handle.address().add(index, IpAddr::V4(addr), 32).replace();
        request.execute().await.map_err(failed(format!("adding {addr}/32")))
    }

    async fn sync_routes(&self, index: u32, want: &BTreeSet<Cidr>) -> Result<(), Error> {
        let mut have = BTreeSet::new();
        for route in self.main_routes().await? {
            if let Some(cidr) = destination_via(&route, index) {
                if want.contains(&cidr) {
                    have.insert(cidr);
                } else {
                    self.handle.route().del(route).execute().await.map_err(failed(format!("deleting route {cidr}")))?;
                    tracing::info!(%cidr, "removed the route of a node that left");
                }
            }
        }
        for cidr in want.difference(&have) {
            let base = cidr.nth(0).unwrap_or(Ipv4Addr::UNSPECIFIED);
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(base, cidr.prefix())
                .output_interface(index)
                .build();
            self.handle.route().add(route).replace().execute().await.map_err(failed(format!("adding route {cidr}")))?;
            tracing::info!(%cidr, "routed a node's pod CIDR through WireGuard");
        }
        Ok(())
    }

    async fn sync_gateway_routes(&self, want: &BTreeMap<Cidr, Ipv4Addr>) -> Result<(), Error> {
        let mut have = BTreeMap::new();
        for route in self.main_routes().await? {
            let Some((cidr, via)) = gateway_route(&route) else { continue };
            if via.is_some() && via == want.get(&cidr).copied() {
                have.insert(cidr, via);
            } else {
                self.handle.route().del(route).execute().await.map_err(failed(format!("deleting route {cidr}")))?;
                tracing::info!(%cidr, "removed a gateway route");
            }
        }
        for (cidr, via) in want.iter().filter(|(cidr, _)| !have.contains_key(*cidr)) {
            let base = cidr.nth(0).unwrap_or(Ipv4Addr::UNSPECIFIED);
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(base, cidr.prefix())
                .gateway(*via)
                .protocol(RouteProtocol::Other(GATEWAY_ROUTE_PROTOCOL))
                .build();
            let add = self.handle.route().add(route).replace().execute().await;
            add.map_err(failed(format!("adding route {cidr} via {via}")))?;
            tracing::info!(%cidr, %via, "routed a node's pod CIDR via the node");
        }
        Ok(())
    }
}

impl Netlink {
    /// The main table's IPv4 routes.
    async fn main_routes(&self) -> Result<Vec<RouteMessage>, Error> {
        let mut all = Vec::new();
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(route) = routes.try_next().await.map_err(failed("listing routes"))? {
            if route.header.table == MAIN_TABLE {
                all.push(route);
            }
        }
        Ok(all)
    }
}

const MAIN_TABLE: u8 = 254;

/// `(destination, next hop)` of a gateway route of ours.
fn gateway_route(route: &RouteMessage) -> Option<(Cidr, Option<Ipv4Addr>)> {
    if route.header.protocol != RouteProtocol::Other(GATEWAY_ROUTE_PROTOCOL) {
        return None;
    }
    let dest = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })?;
    let via = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    });
    Some((Cidr::new(dest, route.header.destination_prefix_length), via))
}

/// The destination of a route leaving by link `index`.
fn destination_via(route: &RouteMessage, index: u32) -> Option<Cidr> {
    let oif = route.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    let dest = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })?;
    oif.then(|| Cidr::new(dest, route.header.destination_prefix_length))
}
