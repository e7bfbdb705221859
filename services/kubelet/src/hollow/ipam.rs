//! Fake addresses: each hollow node's InternalIP, and pod IPs from a slice
//! of `--pod-cidr-base` that belongs to one node (its spec.podCIDR), unique
//! on that node for as long as the pod exists.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// An IPv4 range, `10.128.0.0/9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR like 10.128.0.0/9"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("bad prefix length in {s:?}"))?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(Self { base: u32::from(addr) & mask, prefix })
    }

    /// How many addresses the range holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// The address `offset` places into the range (which must hold it).
    pub fn addr(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(offset as u32))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= self.base && u64::from(ip - self.base) < self.size()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The first pod address in a node's slice: .0 is the network and .1 the
/// node's bridge, as on a real node.
const FIRST_POD_OFFSET: u64 = 2;

/// Per-node pod CIDRs cut from one range, and which addresses are taken.
pub struct PodIps {
    base: Cidr,
    /// Each node's slice holds 2^bits addresses.
    bits: u8,
    state: Mutex<Taken>,
}

struct Taken {
    /// One bit per address, `words_per_node` words per node, all nodes in a row.
    bits: Vec<u64>,
    words_per_node: usize,
    /// pod key → (node, offset), so that retries get the same address and
    /// a deleted pod frees it.
    by_pod: HashMap<String, (u32, u32)>,
}

impl PodIps {
    /// Slices `base` for `nodes` nodes of `max_pods` pods each: at least a
    /// /24 per node, larger when max_pods needs it.
    pub fn new(base: Cidr, nodes: usize, max_pods: u32) -> Result<Self, String> {
        let needed = u64::from(max_pods) + FIRST_POD_OFFSET + 1;
        let bits = (64 - (needed - 1).leading_zeros()).max(8) as u8;
        if bits > 32 - base.prefix || (nodes as u64) << bits > base.size() {
            return Err(format!(
                "{base} holds {} slices of /{} but {nodes} nodes need one each",
                base.size() >> bits.min(32 - base.prefix),
                32 - bits
            ));
        }
        let words_per_node = (1usize << bits).div_ceil(64);
        let taken = Taken { bits: vec![0; words_per_node * nodes], words_per_node, by_pod: HashMap::new() };
        Ok(Self { base, bits, state: Mutex::new(taken) })
    }

    /// Node `node`'s slice: its spec.podCIDR.
    pub fn node_cidr(&self, node: usize) -> Cidr {
        Cidr { base: self.base.base + ((node as u32) << self.bits), prefix: 32 - self.bits }
    }

    /// The address of pod `key` on `node`: the one it has already, else the
    /// lowest free one in the node's slice; `None` when the slice is full.
    pub fn allocate(&self, key: &str, node: usize) -> Option<Ipv4Addr> {
        let mut st = self.lock();
        match st.by_pod.get(key) {
            Some(&(n, offset)) if n as usize == node => return Some(self.node_cidr(node).addr(u64::from(offset))),
            Some(_) => st.release(key),
            None => {}
        }
        let last = (1u64 << self.bits) - 2;
        let offset = (FIRST_POD_OFFSET..=last).find(|o| !st.is_set(node, *o as usize))?;
        st.set(node, offset as usize, true);
        st.by_pod.insert(key.to_string(), (node as u32, offset as u32));
        Some(self.node_cidr(node).addr(offset))
    }

    /// Records an address pod `key` already has (seen after a restart), if
    /// it lies in the node's slice and nobody else holds it.
    pub fn reserve(&self, key: &str, node: usize, ip: Ipv4Addr) {
        let cidr = self.node_cidr(node);
        if !cidr.contains(ip) {
            return;
        }
        let offset = u64::from(u32::from(ip) - cidr.base);
        let mut st = self.lock();
        if st.by_pod.contains_key(key) || st.is_set(node, offset as usize) {
            return;
        }
        st.set(node, offset as usize, true);
        st.by_pod.insert(key.to_string(), (node as u32, offset as u32));
    }

    /// Frees pod `key`'s address.
    pub fn release(&self, key: &str) {
        self.lock().release(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        // Every change under the lock is a few plain writes that cannot panic
        // half way, so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Taken {
    fn is_set(&self, node: usize, offset: usize) -> bool {
        self.bits[node * self.words_per_node + offset / 64] & (1 << (offset % 64)) != 0
    }

    fn set(&mut self, node: usize, offset: usize, on: bool) {
        let word = &mut self.bits[node * self.words_per_node + offset / 64];
        if on {
            *word |= 1 << (offset % 64);
        } else {
            *word &= !(1 << (offset % 64));
        }
    }

    fn release(&mut self, key: &str) {
        if let Some((node, offset)) = self.by_pod.remove(key) {
            self.set(node as usize, offset as usize, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks_cidrs() {
        let c = Cidr::parse("10.42.3.7/16").unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.size(), 65536);
        assert_eq!(c.addr(258), Ipv4Addr::new(10, 42, 1, 2));
        assert!(c.contains(Ipv4Addr::new(10, 42, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(Cidr::parse("10.42.0.0").is_err());
        assert!(Cidr::parse("10.42.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn slices_a_slash_24_per_node_and_refuses_too_many_nodes() {
        let ips = PodIps::new(Cidr::parse("10.42.0.0/16").unwrap(), 256, 110).unwrap();
        assert_eq!(ips.node_cidr(0).to_string(), "10.42.0.0/24");
        assert_eq!(ips.node_cidr(3).to_string(), "10.42.3.0/24");
        let err = PodIps::new(Cidr::parse("10.42.0.0/16").unwrap(), 257, 110).err().unwrap();
        assert!(err.contains("257 nodes"), "{err}");
        // 300 pods need a /23 per node.
        let big = PodIps::new(Cidr::parse("10.0.0.0/8").unwrap(), 5000, 300).unwrap();
        assert_eq!(big.node_cidr(1).to_string(), "10.0.2.0/23");
    }

    #[test]
    fn addresses_are_unique_per_node_stable_per_pod_and_reused_after_release() {
        let ips = PodIps::new(Cidr::parse("10.42.0.0/16").unwrap(), 2, 110).unwrap();
        let a = ips.allocate("ns/a", 1).unwrap();
        let b = ips.allocate("ns/b", 1).unwrap();
        assert_eq!((a, b), (Ipv4Addr::new(10, 42, 1, 2), Ipv4Addr::new(10, 42, 1, 3)));
        assert_eq!(ips.allocate("ns/a", 1), Some(a), "a retry keeps the address");
        assert_eq!(ips.allocate("ns/c", 0), Some(Ipv4Addr::new(10, 42, 0, 2)), "nodes have their own slices");
        ips.release("ns/a");
        assert_eq!(ips.allocate("ns/d", 1), Some(a), "a freed address is handed out again");
        // An address seen on a pod after a restart is not handed out twice.
        ips.reserve("ns/e", 1, Ipv4Addr::new(10, 42, 1, 4));
        assert_eq!(ips.allocate("ns/f", 1), Some(Ipv4Addr::new(10, 42, 1, 5)));
        ips.reserve("ns/g", 1, Ipv4Addr::new(10, 42, 0, 9));
        assert_eq!(ips.allocate("ns/g", 1), Some(Ipv4Addr::new(10, 42, 1, 6)), "out-of-slice addresses are ignored");
    }

    #[test]
    fn a_full_slice_has_no_address() {
        let ips = PodIps::new(Cidr::parse("10.42.0.0/24").unwrap(), 1, 110).unwrap();
        for i in 0..253 {
            assert!(ips.allocate(&format!("ns/p{i}"), 0).is_some(), "pod {i}");
        }
        assert_eq!(ips.allocate("ns/one-more", 0), None);
        ips.release("ns/p7");
        assert_eq!(ips.allocate("ns/one-more", 0), Some(Ipv4Addr::new(10, 42, 0, 9)));
    }
}
