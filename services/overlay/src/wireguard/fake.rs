//! In-memory [`WireGuard`] and [`Links`] for unit tests of the mesh and the
//! gateway: they keep what they were told (peers, addresses, routes), fail when a test
//! says so, and can "die" as a wireguard-go does. Clones share state, so a
//! test keeps one to look through while the mesh owns the other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use skiff_api::cidr::Cidr;
use wireguard_control::Key;

use super::device::WireGuard;
use super::peers::Peer;
use crate::link::Links;
use crate::Error;

/// The interface index the fake host gives the WireGuard link.
pub const INDEX: u32 = 7;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl FakeWireGuard ===

#[derive(Clone, Default)]
pub struct FakeWireGuard {
    state: Arc<Mutex<DeviceState>>,
}

#[derive(Default)]
struct DeviceState {
    /// The peers of the last successful configure.
    peers: Option<Vec<Peer>>,
    listen_port: Option<u16>,
    configures: u32,
    restarts: u32,
    dead: bool,
    /// Configures still to refuse.
    failures: u32,
}

impl FakeWireGuard {
    pub fn peers(&self) -> Option<Vec<Peer>> {
        lock(&self.state).peers.clone()
    }

    pub fn listen_port(&self) -> Option<u16> {
        lock(&self.state).listen_port
    }

    /// How many configures went through.
    pub fn configures(&self) -> u32 {
        lock(&self.state).configures
    }

    pub fn restarts(&self) -> u32 {
        lock(&self.state).restarts
    }

    /// The implementation dies and takes its configuration with it.
    pub fn kill(&self) {
        let mut st = lock(&self.state);
        st.dead = true;
        st.peers = None;
    }

    pub fn fail_next_configures(&self, n: u32) {
        lock(&self.state).failures = n;
    }
}

#[async_trait::async_trait]
impl WireGuard for FakeWireGuard {
    fn mode(&self) -> &'static str {
        "fake"
    }

    fn interface(&self) -> String {
        "wg-test".into()
    }

    fn gone(&mut self) -> bool {
        lock(&self.state).dead
    }

    async fn exited(&mut self) {
        std::future::pending().await
    }

    async fn restart(&mut self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        st.dead = false;
        st.restarts += 1;
        Ok(())
    }

    async fn configure(&self, _key: &Key, port: u16, peers: &[Peer], _previous: Option<&[Peer]>) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.failures > 0 {
            st.failures -= 1;
            return Err(Error::WireGuard { what: "configuring the interface: injected by the test".into() });
        }
        st.peers = Some(peers.to_vec());
        st.listen_port = Some(port);
        st.configures += 1;
        Ok(())
    }
}

// === impl FakeLinks ===

/// A host with one link, the WireGuard interface ([`INDEX`]).
#[derive(Clone)]
pub struct FakeLinks {
    state: Arc<Mutex<LinkState>>,
}

struct LinkState {
    name: String,
    mtu: Option<u32>,
    addresses: BTreeSet<Ipv4Addr>,
    routes: BTreeSet<Cidr>,
    gateway_routes: BTreeMap<Cidr, Ipv4Addr>,
    /// Route syncs still to refuse.
    failures: u32,
}

impl FakeLinks {
    pub fn with_link(name: &str) -> Self {
        let state = LinkState {
            name: name.into(),
            mtu: None,
            addresses: BTreeSet::new(),
            routes: BTreeSet::new(),
            gateway_routes: BTreeMap::new(),
            failures: 0,
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// The MTU of the link once it was brought up.
    pub fn up_with_mtu(&self) -> Option<u32> {
        lock(&self.state).mtu
    }

    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        lock(&self.state).addresses.clone()
    }

    pub fn routes(&self) -> BTreeSet<Cidr> {
        lock(&self.state).routes.clone()
    }

    pub fn gateway_routes(&self) -> BTreeMap<Cidr, Ipv4Addr> {
        lock(&self.state).gateway_routes.clone()
    }

    pub fn fail_next_route_syncs(&self, n: u32) {
        lock(&self.state).failures = n;
    }
}

fn no_such_link(index: u32) -> Error {
    Error::Netlink { what: format!("link {index}: no such device") }
}

#[async_trait::async_trait]
impl Links for FakeLinks {
    async fn index(&self, name: &str) -> Result<Option<u32>, Error> {
        Ok((lock(&self.state).name == name).then_some(INDEX))
    }

    async fn up(&self, index: u32, mtu: u32) -> Result<(), Error> {
        if index != INDEX {
            return Err(no_such_link(index));
        }
        lock(&self.state).mtu = Some(mtu);
        Ok(())
    }

    async fn ensure_address(&self, index: u32, addr: Ipv4Addr) -> Result<(), Error> {
        if index != INDEX {
            return Err(no_such_link(index));
        }
        lock(&self.state).addresses.insert(addr);
        Ok(())
    }

    async fn sync_routes(&self, index: u32, want: &BTreeSet<Cidr>) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if index != INDEX {
            return Err(no_such_link(index));
        }
        if st.failures > 0 {
            st.failures -= 1;
            return Err(Error::Netlink { what: "adding a route: injected by the test".into() });
        }
        st.routes = want.clone();
        Ok(())
    }

    async fn sync_gateway_routes(&self, want: &BTreeMap<Cidr, Ipv4Addr>) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.failures > 0 {
            st.failures -= 1;
            return Err(Error::Netlink { what: "adding a route: injected by the test".into() });
        }
        st.gateway_routes = want.clone();
        Ok(())
    }
}
