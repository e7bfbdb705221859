//! IPv4 networks in CIDR notation (`10.43.0.0/16`): the service IP range
//! the apiserver allocates from and the pod network the node IPAM
//! controller carves into per-node subnets.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network such as `10.43.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let base = u32::from(addr) & Self::mask(prefix);
        Self { base, prefix }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == self.base
    }

    /// The `n`th address (0 is the network address).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(self.base.wrapping_add(n as u32)))
    }

    /// The `n`th subnet of `prefix` bits inside this network.
    pub fn subnet(&self, prefix: u8, n: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 || n >= 1u64 << (prefix - self.prefix) as u32 {
            return None;
        }
        let offset = (n << (32 - prefix as u32)) as u32;
        Some(Cidr { base: self.base.wrapping_add(offset), prefix })
    }

    /// Which subnet of `prefix` bits `other` is, if it is exactly one of them.
    pub fn subnet_index(&self, prefix: u8, other: &Cidr) -> Option<u64> {
        (other.prefix == prefix && prefix >= self.prefix && self.contains(Ipv4Addr::from(other.base)))
            .then(|| ((other.base - self.base) as u64) >> (32 - prefix as u32))
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{s:?}: bad prefix"))?;
        let cidr = Cidr::new(addr, prefix);
        if u32::from(addr) != cidr.base {
            return Err(format!("{s:?} has host bits set (did you mean {cidr}?)"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn parses_and_splits() {
        let c: Cidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.size(), 65536);
        assert!(c.contains("10.42.255.1".parse().unwrap()));
        assert!(!c.contains("10.43.0.1".parse().unwrap()));
        assert_eq!(c.nth(10).unwrap().to_string(), "10.42.0.10");
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.42.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        assert_eq!(c.subnet_index(24, &"10.42.7.0/24".parse().unwrap()), Some(7));
        assert_eq!(c.subnet_index(24, &"10.41.7.0/24".parse().unwrap()), None);
        assert_eq!(c.subnet_index(24, &"10.42.7.0/25".parse().unwrap()), None);
        assert!("10.42.0.1/16".parse::<Cidr>().is_err());
        assert!("10.42.0.0".parse::<Cidr>().is_err());
        assert!("10.42.0.0/33".parse::<Cidr>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().size(), 1 << 32);
    }
}
