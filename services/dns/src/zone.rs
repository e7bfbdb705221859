//! The cluster zone: every name skiff-dns answers for itself, built from
//! Services, Endpoints and Pods, and looked up without touching the API.
//!
//! Names follow the Kubernetes DNS specification:
//! - `<svc>.<ns>.svc.<domain>`: A/AAAA for the ClusterIP, or for a headless
//!   Service one per ready endpoint address; CNAME for an ExternalName.
//! - `<host>.<svc>.<ns>.svc.<domain>` for each headless endpoint address,
//!   `<host>` being its hostname or its dashed IP (as CoreDNS does).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV per named port.
//! - `<a-b-c-d>.<ns>.pod.<domain>` for each pod IP.
//!
//! The zone is immutable once built; a change builds a new one and swaps it
//! in, so lookups never wait on the informers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};

/// What the zone says about one name and type.
#[derive(Debug, PartialEq)]
pub enum Lookup<'a> {
    /// The name exists; the records of the asked type (maybe none: NODATA).
    Found(Vec<&'a Record>),
    /// The name does not exist in the zone.
    NxDomain,
}

/// The records of the cluster domain at one moment.
pub struct Zone {
    origin: Name,
    lower_origin: LowerName,
    ttl: u32,
    soa: Record,
    /// Every existing name, including empty parents (`<ns>.svc.<domain>`):
    /// those answer NODATA rather than NXDOMAIN.
    nodes: HashMap<LowerName, Vec<Record>>,
}

// === impl Zone ===

impl Zone {
    /// An empty zone for `origin` (e.g. `cluster.local.`), with `serial` in
    /// its SOA so that successive builds are told apart.
    pub fn new(origin: &Name, ttl: u32, serial: u32) -> Self {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        let mname =
            Name::from_ascii("ns.dns").and_then(|n| n.append_domain(&origin)).unwrap_or_else(|_| origin.clone());
        let rname =
            Name::from_ascii("hostmaster").and_then(|n| n.append_domain(&origin)).unwrap_or_else(|_| origin.clone());
        // Refresh, retry and expire follow CoreDNS' defaults; the minimum
        // (negative-caching TTL) is the record TTL, so a Service created
        // just after a miss is seen as soon as a hit would be refreshed.
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, ttl);
        let soa = Record::from_rdata(origin.clone(), ttl, RData::SOA(soa));
        let mut nodes = HashMap::new();
        nodes.insert(LowerName::new(&origin), vec![soa.clone()]);
        Self { lower_origin: LowerName::new(&origin), origin, ttl, soa, nodes }
    }

    /// Builds the zone from the informers' objects. `endpoints` finds the
    /// Endpoints of a Service by "namespace/name".
    pub fn build<'a>(
        origin: &Name,
        ttl: u32,
        serial: u32,
        services: impl IntoIterator<Item = &'a Service>,
        endpoints: impl Fn(&str) -> Option<Arc<Endpoints>>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut zone = Self::new(origin, ttl, serial);
        for svc in services {
            let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
                continue;
            };
            let eps = endpoints(&format!("{ns}/{name}"));
            zone.add_service(svc, eps.as_deref());
        }
        for pod in pods {
            zone.add_pod(pod);
        }
        zone
    }

    /// The SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` is in the cluster domain (ours to answer).
    pub fn contains(&self, name: &LowerName) -> bool {
        self.lower_origin.zone_of(name)
    }

    /// Number of names held, empty parents included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The records of `name` of type `rtype`. A CNAME answers every type
    /// (the client follows it), as an authoritative server does.
    pub fn lookup(&self, name: &LowerName, rtype: RecordType) -> Lookup<'_> {
        let Some(records) = self.nodes.get(name) else {
            return Lookup::NxDomain;
        };
        let matching: Vec<&Record> = records
            .iter()
            .filter(|r| rtype == RecordType::ANY || r.record_type() == rtype || r.record_type() == RecordType::CNAME)
            .collect();
        Lookup::Found(matching)
    }

    fn add_service(&mut self, svc: &Service, eps: Option<&Endpoints>) {
        let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
            return;
        };
        let Some(svc_name) = self.name(&[name, ns, "svc"]) else {
            return;
        };
        let Some(spec) = svc.spec.as_ref() else {
            self.add_name(&svc_name);
            return;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            match spec.external_name.as_deref().map(Name::from_ascii) {
                Some(Ok(mut target)) => {
                    target.set_fqdn(true);
                    self.add(svc_name, RData::CNAME(CNAME(target)));
                }
                _ => self.add_name(&svc_name),
            }
            return;
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if !headless {
            self.add_name(&svc_name);
            let ips = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.as_ref());
            for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                self.add(svc_name.clone(), ip_rdata(ip));
            }
            for port in spec.ports.iter().flatten() {
                let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else { continue };
                let proto = port.protocol.as_deref().unwrap_or("TCP");
                if let (Some(srv_name), Ok(port)) =
                    (self.srv_name(port_name, proto, &svc_name), u16::try_from(port.port))
                {
                    self.add(srv_name, RData::SRV(SRV::new(0, 100, port, svc_name.clone())));
                }
            }
            return;
        }
        // Headless: the endpoints' addresses, each under its own name too.
        self.add_name(&svc_name);
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        for subset in eps.and_then(|e| e.subsets.as_ref()).into_iter().flatten() {
            let ready = subset.addresses.iter().flatten();
            let not_ready = subset.not_ready_addresses.iter().flatten().filter(|_| publish_not_ready);
            for addr in ready.chain(not_ready) {
                let Ok(ip) = addr.ip.parse::<IpAddr>() else { continue };
                let host = addr.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| dashed_ip(ip));
                let Some(host_name) = Name::from_ascii(&host).ok().and_then(|h| h.append_domain(&svc_name).ok()) else {
                    continue;
                };
                self.add(svc_name.clone(), ip_rdata(ip));
                self.add(host_name.clone(), ip_rdata(ip));
                for port in subset.ports.iter().flatten() {
                    let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else { continue };
                    let proto = port.protocol.as_deref().unwrap_or("TCP");
                    if let (Some(srv_name), Ok(port)) =
                        (self.srv_name(port_name, proto, &svc_name), u16::try_from(port.port))
                    {
                        self.add(srv_name, RData::SRV(SRV::new(0, 100, port, host_name.clone())));
                    }
                }
            }
        }
    }

    fn add_pod(&mut self, pod: &Pod) {
        let Some(ns) = pod.metadata.namespace.as_deref() else { return };
        let Some(status) = pod.status.as_ref() else { return };
        let ips = status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).chain(status.pod_ip.as_deref());
        for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            if let Some(name) = self.name(&[&dashed_ip(ip), ns, "pod"]) {
                self.add(name, ip_rdata(ip));
            }
        }
    }

    /// `labels` (most specific first) under the origin, if they make a
    /// valid name.
    fn name(&self, labels: &[&str]) -> Option<Name> {
        let relative = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        relative.append_domain(&self.origin).ok().map(|n| n.to_lowercase())
    }

    fn srv_name(&self, port: &str, proto: &str, svc_name: &Name) -> Option<Name> {
        let port = format!("_{}", port.to_ascii_lowercase());
        let proto = format!("_{}", proto.to_ascii_lowercase());
        let relative = Name::from_labels([port.as_bytes(), proto.as_bytes()]).ok()?;
        relative.append_domain(svc_name).ok()
    }

    /// Adds a record, and makes every name between it and the origin exist.
    fn add(&mut self, name: Name, rdata: RData) {
        let record = Record::from_rdata(name.to_lowercase(), self.ttl, rdata);
        self.add_name(&name);
        let records = self.nodes.entry(LowerName::new(&name)).or_default();
        // The same pod IP can appear twice (podIP and podIPs, host network).
        if !records.contains(&record) {
            records.push(record);
        }
    }

    /// Makes `name` and its parents up to the origin exist (NODATA, not
    /// NXDOMAIN, for types they lack).
    fn add_name(&mut self, name: &Name) {
        let origin_labels = self.origin.num_labels();
        for labels in (origin_labels + 1..=name.num_labels()).rev() {
            let lower = LowerName::new(&name.trim_to(usize::from(labels)));
            if self.nodes.contains_key(&lower) {
                break;
            }
            self.nodes.insert(lower, Vec::new());
        }
    }
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// The label for an IP in pod and endpoint names: `10.1.2.3` → `10-1-2-3`,
/// `fd00::1` → `fd00--1`.
pub fn dashed_ip(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn lower(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).unwrap())
    }

    fn zone() -> Zone {
        let services: Vec<Service> = vec![
            obj(json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.43.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}})),
            obj(json!({"metadata": {"name": "db", "namespace": "prod"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})),
            obj(json!({"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}})),
        ];
        let eps: Endpoints = obj(json!({"metadata": {"name": "db", "namespace": "prod"}, "subsets": [{
            "addresses": [{"ip": "10.1.0.5", "hostname": "db-0"}, {"ip": "10.1.0.6"}],
            "notReadyAddresses": [{"ip": "10.1.0.7"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]}));
        let pods: Vec<Pod> = vec![
            obj(
                json!({"metadata": {"name": "p", "namespace": "default"}, "status": {"podIP": "10.1.0.9", "podIPs": [{"ip": "10.1.0.9"}]}}),
            ),
            obj(json!({"metadata": {"name": "q", "namespace": "default"}, "status": {}})),
        ];
        let eps = Arc::new(eps);
        Zone::build(
            &Name::from_ascii("cluster.local").unwrap(),
            5,
            1,
            &services,
            |key| (key == "prod/db").then(|| eps.clone()),
            &pods,
        )
    }

    fn rdatas(zone: &Zone, name: &str, rtype: RecordType) -> Vec<String> {
        match zone.lookup(&lower(name), rtype) {
            Lookup::Found(records) => records.iter().map(|r| r.data.to_string()).collect(),
            Lookup::NxDomain => vec!["NXDOMAIN".into()],
        }
    }

    #[test]
    fn cluster_ip_service() {
        let z = zone();
        assert_eq!(rdatas(&z, "web.default.svc.cluster.local.", RecordType::A), ["10.43.0.10"]);
        // Case-insensitive.
        assert_eq!(rdatas(&z, "WEB.Default.svc.cluster.local.", RecordType::A), ["10.43.0.10"]);
        // Exists, no AAAA: NODATA.
        assert!(rdatas(&z, "web.default.svc.cluster.local.", RecordType::AAAA).is_empty());
        assert_eq!(
            rdatas(&z, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        // Unnamed ports have no SRV name.
        assert_eq!(rdatas(&z, "_81._tcp.web.default.svc.cluster.local.", RecordType::SRV), ["NXDOMAIN"]);
    }

    #[test]
    fn headless_service() {
        let z = zone();
        let mut a = rdatas(&z, "db.prod.svc.cluster.local.", RecordType::A);
        a.sort();
        // Not-ready addresses are left out.
        assert_eq!(a, ["10.1.0.5", "10.1.0.6"]);
        assert_eq!(rdatas(&z, "db-0.db.prod.svc.cluster.local.", RecordType::A), ["10.1.0.5"]);
        assert_eq!(rdatas(&z, "10-1-0-6.db.prod.svc.cluster.local.", RecordType::A), ["10.1.0.6"]);
        let mut srv = rdatas(&z, "_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
        srv.sort();
        assert_eq!(
            srv,
            ["0 100 5432 10-1-0-6.db.prod.svc.cluster.local.", "0 100 5432 db-0.db.prod.svc.cluster.local."]
        );
    }

    #[test]
    fn external_name_and_pods() {
        let z = zone();
        assert_eq!(rdatas(&z, "ext.default.svc.cluster.local.", RecordType::A), ["example.com."]);
        assert_eq!(rdatas(&z, "10-1-0-9.default.pod.cluster.local.", RecordType::A), ["10.1.0.9"]);
        assert_eq!(rdatas(&z, "10-1-0-8.default.pod.cluster.local.", RecordType::A), ["NXDOMAIN"]);
    }

    #[test]
    fn missing_names_and_parents() {
        let z = zone();
        assert_eq!(rdatas(&z, "nope.default.svc.cluster.local.", RecordType::A), ["NXDOMAIN"]);
        // ndots:5 search expansion of an existing name: in the zone, absent.
        assert_eq!(rdatas(&z, "web.default.svc.cluster.local.default.svc.cluster.local.", RecordType::A), ["NXDOMAIN"]);
        // Empty parents exist (NODATA), the apex holds the SOA.
        assert!(rdatas(&z, "default.svc.cluster.local.", RecordType::A).is_empty());
        assert!(rdatas(&z, "svc.cluster.local.", RecordType::A).is_empty());
        assert_eq!(rdatas(&z, "cluster.local.", RecordType::SOA).len(), 1);
        assert_eq!(z.soa().record_type(), RecordType::SOA);
        assert!(z.contains(&lower("a.b.cluster.local.")));
        assert!(!z.contains(&lower("www.example.test.")));
        assert!(!z.contains(&lower("notcluster.local.")));
    }

    #[test]
    fn dashed_ips() {
        assert_eq!(dashed_ip("10.1.2.3".parse().unwrap()), "10-1-2-3");
        assert_eq!(dashed_ip("fd00::1".parse().unwrap()), "fd00--1");
    }
}
