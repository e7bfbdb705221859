//! Forwarding of names outside the cluster domain to the upstream
//! resolvers, through hickory's resolver (which also caches).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::TokioResolver;

use crate::Error;

/// Where resolv.conf's nameservers come from when `--upstream` is not given.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The answer to a forwarded query, ready to be written back.
#[derive(Debug)]
pub struct Forwarded {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// Sends queries to the upstream resolvers.
pub struct Forwarder {
    resolver: TokioResolver,
}

impl Forwarder {
    pub fn new(upstreams: &[SocketAddr]) -> Result<Self, Error> {
        let servers = upstreams
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let mut options = ResolverOpts::default();
        // Names arrive fully qualified from the client, which already did
        // its own search-list expansion; /etc/hosts is the client's business.
        options.ndots = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.preserve_intermediates = true;
        // Clients retry on their own (glibc: 5 s, 2 attempts); answer
        // SERVFAIL before they give up on us.
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(Error::Resolver)?;
        Ok(Self { resolver })
    }

    pub async fn forward(&self, name: &LowerName, rtype: RecordType) -> Forwarded {
        let mut name = Name::from(name.clone());
        name.set_fqdn(true);
        match self.resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                Forwarded { rcode: ResponseCode::NoError, answers: lookup.answers().to_vec(), authorities: Vec::new() }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, soa, .. }))) => Forwarded {
                rcode: response_code,
                answers: Vec::new(),
                authorities: soa.map(|soa| soa.into_record_of_rdata()).into_iter().collect(),
            },
            Err(error) => {
                tracing::debug!(%name, %rtype, %error, "forwarding failed");
                Forwarded { rcode: ResponseCode::ServFail, answers: Vec::new(), authorities: Vec::new() }
            }
        }
    }
}

/// Parses `--upstream` entries: `IP` (port 53) or `IP:PORT` (`[v6]:PORT`).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, Error> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)).map_err(|_| Error::Upstream(s.to_string()))
}

/// The `nameserver` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        // A scoped v6 address (fe80::1%eth0) does not parse; skip it.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        assert_eq!(parse_upstream("10.0.0.1").unwrap(), "10.0.0.1:53".parse().unwrap());
        assert_eq!(parse_upstream(" 127.0.0.1:5353").unwrap(), "127.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_upstream("[::1]:54").unwrap(), "[::1]:54".parse().unwrap());
        assert_eq!(parse_upstream("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(matches!(parse_upstream("dns.example"), Err(Error::Upstream(_))));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let conf = "# comment\nsearch default.svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n\
                    nameserver   fd00::53  \nnameserver fe80::1%eth0\nnameserver\n";
        assert_eq!(parse_resolv_conf(conf), vec!["10.0.0.10:53".parse().unwrap(), "[fd00::53]:53".parse().unwrap()]);
    }
}
