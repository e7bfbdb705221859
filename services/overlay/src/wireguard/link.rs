//! The interface's address, MTU and routes ([`Links`]), and the real
//! access to them over rtnetlink ([`Netlink`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
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
}

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
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(route) = routes.try_next().await.map_err(failed("listing routes"))? {
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
}

/// The destination of a main-table route leaving by link `index`.
fn destination_via(route: &RouteMessage, index: u32) -> Option<Cidr> {
    let oif = route.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    let main = route.header.table == 254;
    let dest = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })?;
    (oif && main).then(|| Cidr::new(dest, route.header.destination_prefix_length))
}
