//! Service cluster IPs and node ports, handed out as Kubernetes does.
//!
//! There is no allocation table of its own: what is taken is read from the
//! Services in the watch cache (so it is always derivable from etcd and
//! survives restarts for free), plus this apiserver's own writes that the
//! cache has not shown yet. One mutex serializes Service writes in this
//! apiserver, so two creates never pick the same IP. Several apiservers
//! writing Services at the same instant could still collide; Kubernetes
//! avoids that with a bitmap in etcd, which skiff does not keep yet.
//!
//! The rules ([`assign`]): ClusterIP, NodePort and LoadBalancer Services get
//! a free IP of `--service-cluster-ip-range` unless they ask for one (which
//! must be inside the range and free); the network address is never given
//! and the tenth address is kept for the cluster DNS Service, which asks
//! for it by name. `clusterIP: None` is headless. NodePort and LoadBalancer
//! ports get a free port of `--service-node-port-range` unless given. On
//! update the IP is immutable and node ports are kept unless changed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde_json::{json, Value};
use skiff_api::cidr::Cidr;
use skiff_api::Error as ModelError;
use tokio::sync::{Mutex, MutexGuard};

use crate::cache::WatchCache;

// === impl PortRange ===

/// An inclusive range of ports such as `30000-32767`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: i64) -> bool {
        (self.first as i64..=self.last as i64).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range (first-last)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (first, last) = (a.trim().parse::<u16>().map_err(|_| bad())?, b.trim().parse::<u16>().map_err(|_| bad())?);
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

// === the rules ===

/// The ranges Services draw from.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub cluster_ips: Cidr,
    pub node_ports: PortRange,
}

/// What Services hold: cluster IPs and node ports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Used {
    pub ips: HashSet<Ipv4Addr>,
    pub ports: HashSet<u16>,
}

impl Used {
    /// What one stored Service holds.
    pub fn of(svc: &Value) -> Used {
        let mut used = Used::default();
        used.ips.extend(cluster_ip(svc).and_then(|ip| ip.parse::<Ipv4Addr>().ok()));
        for p in ports(svc) {
            used.ports.extend(node_port(p).and_then(|n| u16::try_from(n).ok()));
        }
        used
    }

    fn extend(&mut self, other: &Used) {
        self.ips.extend(&other.ips);
        self.ports.extend(&other.ports);
    }
}

fn cluster_ip(svc: &Value) -> Option<&str> {
    svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP")
}

fn ports(svc: &Value) -> impl Iterator<Item = &Value> {
    svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten()
}

fn node_port(p: &Value) -> Option<i64> {
    p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0)
}

fn needs_node_ports(svc: &Value) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false),
        _ => false,
    }
}

/// Fills in `svc`'s spec.clusterIP(s) and node ports. `old` is the stored
/// Service on update; `used` what every *other* Service holds; `seed`
/// where the search for a free IP or port starts (random in production, so
/// that concurrent apiservers rarely collide).
pub fn assign(ranges: &Ranges, used: &Used, svc: &mut Value, old: Option<&Value>, seed: u64) -> Result<(), ModelError> {
    if !svc["spec"].is_object() {
        return Ok(());
    }
    if service_type(svc) == "ExternalName" {
        // A DNS alias: no virtual IP, no node ports.
        let spec = svc["spec"].as_object_mut().expect("checked above");
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
        return Ok(());
    }
    assign_ip(ranges, used, svc, old, seed)?;
    assign_node_ports(ranges, used, svc, old, seed)
}

fn assign_ip(ranges: &Ranges, used: &Used, svc: &mut Value, old: Option<&Value>, seed: u64) -> Result<(), ModelError> {
    let mut wanted = cluster_ip(svc).map(str::to_string);
    let ips: Vec<String> = svc
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    match (&wanted, ips.first()) {
        (None, Some(first)) => wanted = Some(first.clone()),
        (Some(w), Some(first)) if w != first => {
            return Err(ModelError::field("spec.clusterIPs", format!("{first} must match spec.clusterIP {w}")))
        }
        _ => {}
    }
    if ips.len() > 1 {
        return Err(ModelError::field("spec.clusterIPs", "only one IPv4 cluster IP is supported"));
    }
    if let Some(previous) = old.and_then(cluster_ip) {
        match &wanted {
            None => wanted = Some(previous.to_string()),
            Some(w) if w != previous => {
                return Err(ModelError::field(
                    "spec.clusterIP",
                    format!("field is immutable (is {previous}, may not become {w})"),
                ))
            }
            Some(_) => {}
        }
        let ip = wanted.expect("set above");
        set_ip(svc, &ip);
        return Ok(());
    }
    let ip = match wanted.as_deref() {
        Some("None") => {
            if service_type(svc) != "ClusterIP" {
                return Err(ModelError::field(
                    "spec.clusterIP",
                    format!("may not be None for {} services", service_type(svc)),
                ));
            }
            "None".to_string()
        }
        Some(requested) => {
            let ip: Ipv4Addr = requested.parse().map_err(|_| {
                ModelError::field("spec.clusterIP", format!("{requested:?} is not a valid IPv4 address or None"))
            })?;
            let cidr = ranges.cluster_ips;
            if !cidr.contains(ip) || Some(ip) == cidr.nth(0) {
                return Err(ModelError::field("spec.clusterIP", format!("{ip} is not in the service CIDR {cidr}")));
            }
            if used.ips.contains(&ip) {
                return Err(ModelError::field(
                    "spec.clusterIP",
                    format!("{ip} is already allocated to another service"),
                ));
            }
            ip.to_string()
        }
        None => free_ip(ranges.cluster_ips, used, seed)
            .ok_or_else(|| {
                ModelError::field(
                    "spec.clusterIP",
                    format!("no free IP left in the service CIDR {}", ranges.cluster_ips),
                )
            })?
            .to_string(),
    };
    set_ip(svc, &ip);
    Ok(())
}

fn set_ip(svc: &mut Value, ip: &str) {
    let spec = &mut svc["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if spec.get("ipFamilies").is_none_or(Value::is_null) {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
}

/// A free address of `cidr`: never the network address, the broadcast
/// address (for ranges with one) or the tenth address (the DNS Service's).
pub fn free_ip(cidr: Cidr, used: &Used, seed: u64) -> Option<Ipv4Addr> {
    let size = cidr.size();
    let reserved = |n: u64| n == 0 || n == 10 || (size > 2 && n == size - 1);
    (0..size).map(|i| (seed.wrapping_add(i)) % size).filter(|n| !reserved(*n)).find_map(|n| {
        let ip = cidr.nth(n)?;
        (!used.ips.contains(&ip)).then_some(ip)
    })
}

fn assign_node_ports(
    ranges: &Ranges,
    used: &Used,
    svc: &mut Value,
    old: Option<&Value>,
    seed: u64,
) -> Result<(), ModelError> {
    let wanted = needs_node_ports(svc);
    let keeps_given = service_type(svc) == "LoadBalancer";
    // On update, a port without a nodePort keeps the one it had (matched by
    // port number and protocol).
    let previous: HashMap<(i64, String), i64> = old
        .filter(|o| needs_node_ports(o) || service_type(o) == "LoadBalancer")
        .map(|o| ports(o).filter_map(|p| Some(((p["port"].as_i64()?, protocol(p)), node_port(p)?))).collect())
        .unwrap_or_default();
    let Some(list) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else { return Ok(()) };
    let mut mine: HashSet<(i64, String)> = HashSet::new();
    let mut taken = used.ports.clone();
    let range = ranges.node_ports;
    // Given ports first, so one allocated for an earlier port never takes
    // a later port's request.
    for (i, p) in list.iter_mut().enumerate() {
        if !wanted && !keeps_given {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
            continue;
        }
        let requested =
            node_port(p).or_else(|| p["port"].as_i64().and_then(|port| previous.get(&(port, protocol(p))).copied()));
        let Some(np) = requested else { continue };
        let path = format!("spec.ports[{i}].nodePort");
        if !range.contains(np) {
            return Err(ModelError::field(path, format!("{np} is outside the node port range {range}")));
        }
        if !mine.insert((np, protocol(p))) || used.ports.contains(&(np as u16)) {
            return Err(ModelError::field(path, format!("{np} is already allocated")));
        }
        taken.insert(np as u16);
        p["nodePort"] = json!(np);
    }
    if !wanted {
        return Ok(());
    }
    let span = (range.last - range.first) as u64 + 1;
    for (i, p) in list.iter_mut().enumerate() {
        if node_port(p).is_some() {
            continue;
        }
        let free = (0..span).map(|k| range.first + ((seed.wrapping_add(k)) % span) as u16).find(|n| !taken.contains(n));
        let Some(np) = free else {
            return Err(ModelError::field(
                format!("spec.ports[{i}].nodePort"),
                format!("no free port left in the node port range {range}"),
            ));
        };
        taken.insert(np);
        p["nodePort"] = json!(np);
    }
    Ok(())
}

fn protocol(p: &Value) -> String {
    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string()
}

// === impl ServiceAllocator ===

/// A write of a Service this apiserver made that the cache may not show yet.
struct Pending {
    key: String,
    revision: i64,
    used: Used,
}

/// What the allocator remembers between Service writes.
#[derive(Default)]
struct Ledger {
    /// This apiserver's writes the cache may not show yet.
    pending: Vec<Pending>,
    /// What each cached Service holds, by key, with the revision it was
    /// read at: only Services changed since the last write are decoded
    /// again, so a write costs a pass over the keys, not a parse of every
    /// Service (which made 10,000 creates take minutes).
    cached: HashMap<String, (i64, Used)>,
}

/// Serializes Service writes in this apiserver and works out what is taken.
pub struct ServiceAllocator {
    ranges: Ranges,
    ledger: Mutex<Ledger>,
}

/// A Service write in progress: holds the allocator's lock until dropped.
pub struct Allocation<'a> {
    ranges: Ranges,
    ledger: MutexGuard<'a, Ledger>,
    key: Option<String>,
    claimed: Used,
}

impl ServiceAllocator {
    pub fn new(ranges: Ranges) -> Self {
        Self { ranges, ledger: Mutex::new(Ledger::default()) }
    }

    /// Starts a Service write: waits for the lock, then brings the ledger up
    /// to what `cache` shows. The caller hands a cache that shows its own
    /// Service writes; the ones this allocator made since stay pending.
    pub async fn begin(&self, cache: &WatchCache) -> Allocation<'_> {
        let mut ledger = self.ledger.lock().await;
        let (objects, revision) = cache.objects(&cache.info.key_prefix(None));
        ledger.pending.retain(|p| p.revision > revision);
        let mut previous = std::mem::take(&mut ledger.cached);
        ledger.cached = objects
            .into_iter()
            .map(|o| {
                let used = match previous.remove(&o.key) {
                    Some((at, used)) if at == o.revision => used,
                    _ => serde_json::from_slice::<Value>(&o.json).map(|svc| Used::of(&svc)).unwrap_or_default(),
                };
                (o.key.clone(), (o.revision, used))
            })
            .collect();
        Allocation { ranges: self.ranges, ledger, key: None, claimed: Used::default() }
    }
}

impl Allocation<'_> {
    /// Assigns `svc` (stored at `key`; `old` its current state on update).
    pub fn assign(&mut self, key: &str, svc: &mut Value, old: Option<&Value>) -> Result<(), ModelError> {
        let others = self.held_by_others(key);
        assign(&self.ranges, &others, svc, old, uuid::Uuid::new_v4().as_u128() as u64)?;
        self.key = Some(key.to_string());
        self.claimed = Used::of(svc);
        Ok(())
    }

    /// What every Service but `key` holds: pending writes win over the cache.
    fn held_by_others(&self, key: &str) -> Used {
        let pending: HashMap<&str, &Used> = self.ledger.pending.iter().map(|p| (p.key.as_str(), &p.used)).collect();
        let mut others = Used::default();
        for (k, (_, used)) in &self.ledger.cached {
            if k != key && !pending.contains_key(k.as_str()) {
                others.extend(used);
            }
        }
        for (k, used) in pending {
            if k != key {
                others.extend(used);
            }
        }
        others
    }

    /// The write went through at `revision` (a delete claims nothing).
    pub fn written(mut self, revision: i64, deleted: bool) {
        if let Some(key) = self.key.take() {
            let used = if deleted { Used::default() } else { std::mem::take(&mut self.claimed) };
            // Several writes of one key may be pending; the newest counts.
            self.ledger.pending.retain(|p| p.key != key);
            self.ledger.pending.push(Pending { key, revision, used });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> Ranges {
        Ranges { cluster_ips: "10.43.0.0/16".parse().unwrap(), node_ports: "30000-32767".parse().unwrap() }
    }

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "s"}, "spec": spec})
    }

    fn err(r: Result<(), ModelError>) -> String {
        r.expect_err("should fail").to_string()
    }

    #[test]
    fn parses_port_ranges() {
        assert_eq!("30000-32767".parse::<PortRange>().unwrap(), PortRange { first: 30000, last: 32767 });
        assert!("5-1".parse::<PortRange>().is_err());
    }

    #[test]
    fn allocates_a_free_ip_never_the_network_or_dns_address() {
        let r = Ranges { cluster_ips: "10.43.0.0/28".parse().unwrap(), ..ranges() };
        let mut used = Used::default();
        for seed in 0..40 {
            let mut s = svc(json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
            if assign(&r, &used, &mut s, None, seed).is_err() {
                break;
            }
            let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
            assert!(used.ips.insert(ip), "{ip} given twice");
        }
        // 16 addresses less network, broadcast and .10.
        assert_eq!(used.ips.len(), 13);
        for reserved in ["10.43.0.0", "10.43.0.10", "10.43.0.15"] {
            assert!(!used.ips.contains(&reserved.parse().unwrap()), "{reserved} was given");
        }
        let mut s = svc(json!({"ports": [{"port": 80}]}));
        assert!(err(assign(&r, &used, &mut s, None, 0)).contains("no free IP"));
    }

    #[test]
    fn a_requested_ip_must_be_in_range_and_free() {
        let mut used = Used::default();
        let mut s = svc(json!({"clusterIP": "10.44.0.1", "ports": [{"port": 80}]}));
        assert_eq!(
            err(assign(&ranges(), &used, &mut s, None, 0)),
            "spec.clusterIP: 10.44.0.1 is not in the service CIDR 10.43.0.0/16"
        );
        let mut dns = svc(json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}));
        assign(&ranges(), &used, &mut dns, None, 0).unwrap();
        assert_eq!(dns["spec"]["clusterIPs"], json!(["10.43.0.10"]));
        used.ips.insert("10.43.0.10".parse().unwrap());
        let mut again = svc(json!({"clusterIP": "10.43.0.10", "ports": [{"port": 53}]}));
        assert!(err(assign(&ranges(), &used, &mut again, None, 0))
            .contains("spec.clusterIP: 10.43.0.10 is already allocated"));
    }

    #[test]
    fn headless_gets_no_ip() {
        let mut s = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assign(&ranges(), &Used::default(), &mut s, None, 0).unwrap();
        assert_eq!(s["spec"]["clusterIPs"], json!(["None"]));
        assert!(Used::of(&s).ips.is_empty());
        let mut np = svc(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(err(assign(&ranges(), &Used::default(), &mut np, None, 0)).contains("spec.clusterIP"));
    }

    #[test]
    fn node_ports_are_allocated_and_checked() {
        let mut used = Used::default();
        used.ports.insert(30080);
        let mut s = svc(json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}));
        assign(&ranges(), &used, &mut s, None, 80).unwrap();
        let got: Vec<i64> = ports(&s).map(|p| node_port(p).unwrap()).collect();
        assert!(got.iter().all(|p| (30000..=32767).contains(p)));
        assert!(!got.contains(&30080) && got[0] != got[1]);

        let mut dup = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert_eq!(
            err(assign(&ranges(), &used, &mut dup, None, 0)),
            "spec.ports[0].nodePort: 30080 is already allocated"
        );
        let mut twice = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "nodePort": 31000}, {"name": "b", "port": 81, "nodePort": 31000}]}));
        assert!(err(assign(&ranges(), &used, &mut twice, None, 0)).starts_with("spec.ports[1].nodePort"));
        let mut outside = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]}));
        assert!(err(assign(&ranges(), &used, &mut outside, None, 0)).contains("outside the node port range"));
        // A ClusterIP service gets none.
        let mut plain = svc(json!({"ports": [{"port": 80}]}));
        assign(&ranges(), &used, &mut plain, None, 0).unwrap();
        assert!(Used::of(&plain).ports.is_empty());
    }

    #[test]
    fn update_keeps_ip_and_node_ports() {
        let used = Used::default();
        let mut old = svc(json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        assign(&ranges(), &used, &mut old, None, 7).unwrap();
        let mut new = svc(json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        assign(&ranges(), &used, &mut new, Some(&old), 99).unwrap();
        assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
        assert_eq!(new["spec"]["ports"][0]["nodePort"], old["spec"]["ports"][0]["nodePort"]);

        let mut moved = svc(json!({"clusterIP": "10.43.9.9", "type": "NodePort", "ports": [{"port": 80}]}));
        assert!(
            err(assign(&ranges(), &used, &mut moved, Some(&old), 0)).starts_with("spec.clusterIP: field is immutable")
        );

        let mut changed = svc(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31111}]}));
        assign(&ranges(), &used, &mut changed, Some(&old), 0).unwrap();
        assert_eq!(changed["spec"]["ports"][0]["nodePort"], 31111);

        let mut to_cluster_ip = svc(json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 31111}]}));
        assign(&ranges(), &used, &mut to_cluster_ip, Some(&old), 0).unwrap();
        assert!(Used::of(&to_cluster_ip).ports.is_empty());
    }

    fn cached(name: &str, ip: &str, revision: i64) -> std::sync::Arc<crate::cache::CachedObject> {
        let info = skiff_api::KindInfo::by_kind("Service").unwrap();
        let svc = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": ip}});
        let stored = serde_json::to_vec(&svc).unwrap();
        std::sync::Arc::new(
            crate::cache::CachedObject::decode(info, info.key("default", name), &stored, revision).unwrap(),
        )
    }

    fn ip_of(svc: &Value) -> String {
        svc["spec"]["clusterIP"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn writes_the_cache_does_not_show_yet_stay_taken_and_changed_services_are_read_again() {
        use crate::cache::EventType;
        let info = skiff_api::KindInfo::by_kind("Service").unwrap();
        let cache = WatchCache::new(info, 16);
        // A /29: addresses 1 to 6 can be given.
        let allocator = ServiceAllocator::new(Ranges { cluster_ips: "10.43.0.0/29".parse().unwrap(), ..ranges() });
        cache.apply(EventType::Added, cached("a", "10.43.0.1", 1));

        // Five creates while the cache stays at revision 1: each sees the
        // earlier ones as pending, so all six addresses end up distinct.
        let mut given = vec!["10.43.0.1".to_string()];
        for (n, name) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            let mut alloc = allocator.begin(&cache).await;
            let mut svc = svc(json!({}));
            alloc.assign(&info.key("default", name), &mut svc, None).unwrap();
            given.push(ip_of(&svc));
            alloc.written(2 + n as i64, false);
        }
        let distinct: HashSet<&String> = given.iter().collect();
        assert_eq!(distinct.len(), 6, "{given:?}");
        let mut alloc = allocator.begin(&cache).await;
        assert!(err(alloc.assign(&info.key("default", "g"), &mut svc(json!({})), None)).contains("no free IP"));
        drop(alloc);

        // The cache catches up, and `a` moved to another address meanwhile
        // (as a restore from backup might): the ledger reads `a` again.
        cache.apply(EventType::Modified, cached("a", "10.43.0.2", 7));
        let alloc = allocator.begin(&cache).await;
        assert!(alloc.ledger.pending.is_empty(), "the cache is past every pending write");
        assert_eq!(alloc.ledger.cached.len(), 1);
        let others = alloc.held_by_others(&info.key("default", "z"));
        assert!(others.ips.contains(&"10.43.0.2".parse().unwrap()));
        assert!(!others.ips.contains(&"10.43.0.1".parse().unwrap()), "10.43.0.1 was freed");
        // What a Service holds does not count against itself.
        assert!(alloc.held_by_others(&info.key("default", "a")).ips.is_empty());
    }
}
