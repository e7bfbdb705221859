//! The route table: every Ingress of our class, merged per host, resolved
//! down to endpoint addresses. Built from the informer caches after each
//! batch of changes and swapped in whole; a request reads one table from
//! start to end, so it never sees half an update.
//!
//! Matching follows Kubernetes and ingress-nginx:
//! - host: an exact rule host, else a `*.` wildcard covering exactly one
//!   more label, else the rules without a host, else the default backend;
//! - path: the longest matching path wins, `Exact` before `Prefix` at equal
//!   length; `Prefix` matches whole `/` elements (`/foo` matches `/foo/bar`,
//!   not `/foobar`); `ImplementationSpecific` is a `Prefix`;
//! - the same host and path in two Ingresses: the older Ingress wins
//!   (creation time, then namespace/name), as ingress-nginx decides;
//! - a host with paths but no match falls to its Ingress's defaultBackend.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints as K8sEndpoints, Service, ServicePort};
use k8s_openapi::api::networking::v1::{Ingress, IngressServiceBackend};

use crate::balance::{Endpoints, Peers};
use crate::settings::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    Exact,
    Prefix,
}

/// Where a matched request goes.
#[derive(Debug)]
pub enum Target {
    /// The Service port's ready endpoints (possibly none).
    Service { service: String, port: String, endpoints: Endpoints },
    /// A backend that cannot be served, with why (the 503 body).
    Unavailable(String),
}

/// One rule's backend, with what metrics and logs label it by.
#[derive(Debug)]
pub struct Route {
    /// `namespace/name` of the Ingress that defined it.
    pub ingress: String,
    /// The rule's host as written (`*.example.com`, or empty).
    pub host: String,
    /// The rule's path as written (empty for a defaultBackend).
    pub path: String,
    pub target: Target,
    pub settings: Arc<Settings>,
    /// The host is listed in the Ingress's `tls` section.
    pub tls: bool,
}

#[derive(Debug)]
struct PathRoute {
    path: String,
    kind: PathKind,
    route: Arc<Route>,
}

#[derive(Debug, Default)]
struct HostRoutes {
    /// Sorted so that the first match is the one that wins.
    paths: Vec<PathRoute>,
    /// The defaultBackend of the oldest Ingress naming this host.
    fallback: Option<Arc<Route>>,
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.paths.iter().find(|p| path_matches(p.kind, &p.path, path)).map(|p| &p.route).or(self.fallback.as_ref())
    }

    fn sort(&mut self) {
        // Stable: among equal paths the older Ingress, inserted first, wins.
        self.paths.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.kind.cmp(&b.kind)));
    }
}

/// A rule two Ingresses both define; the newer one is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub ignored: String,
    pub winner: String,
    pub host: String,
    pub path: String,
}

/// Everything the proxy routes by.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, HostRoutes>,
    any_host: HostRoutes,
    default: Option<Arc<Route>>,
    /// Hosts named in a `tls` section, lower-case (wildcards as written).
    tls_hosts: BTreeSet<String>,
    pub conflicts: Vec<Conflict>,
}

/// Where backends are looked up: the informers' caches, by `namespace/name`.
pub struct Lookups<'a> {
    pub service: &'a dyn Fn(&str) -> Option<Arc<Service>>,
    pub endpoints: &'a dyn Fn(&str) -> Option<Arc<K8sEndpoints>>,
}

impl RouteTable {
    /// Builds the table from the Ingresses of our class.
    pub fn build(mut ingresses: Vec<Arc<Ingress>>, lookups: &Lookups<'_>, peers: &Peers) -> Self {
        ingresses.sort_by_key(|ing| age_key(ing));
        let mut table = RouteTable::default();
        for ing in &ingresses {
            table.add(ing, lookups, peers);
        }
        for routes in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            routes.sort();
        }
        table.any_host.sort();
        table
    }

    fn add(&mut self, ing: &Ingress, lookups: &Lookups<'_>, peers: &Peers) {
        let namespace = ing.metadata.namespace.clone().unwrap_or_default();
        let key = format!("{namespace}/{}", ing.metadata.name.as_deref().unwrap_or_default());
        let Some(spec) = &ing.spec else { return };
        let (settings, _) = Settings::from_annotations(ing.metadata.annotations.as_ref());
        let settings = Arc::new(settings);
        let tls_hosts: BTreeSet<String> =
            spec.tls.iter().flatten().flat_map(|t| t.hosts.iter().flatten()).map(|h| h.to_ascii_lowercase()).collect();
        let route = |host: &str, path: &str, backend: Option<&IngressServiceBackend>| {
            Arc::new(Route {
                ingress: key.clone(),
                host: host.to_string(),
                path: path.to_string(),
                target: resolve(&namespace, backend, lookups, peers),
                settings: settings.clone(),
                tls: tls_hosts.contains(host),
            })
        };
        let default_backend = spec.default_backend.as_ref().map(|b| b.service.as_ref());
        let mut conflicts = Vec::new();
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().unwrap_or_default().to_ascii_lowercase();
            let routes = self.host_entry(&host);
            for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let kind = if p.path_type == "Exact" { PathKind::Exact } else { PathKind::Prefix };
                let path = normalize(p.path.as_deref().unwrap_or("/"), kind);
                if let Some(existing) = routes.paths.iter().find(|r| r.kind == kind && r.path == path) {
                    conflicts.push(Conflict {
                        ignored: key.clone(),
                        winner: existing.route.ingress.clone(),
                        host: host.clone(),
                        path,
                    });
                    continue;
                }
                let r = route(&host, &path, p.backend.service.as_ref());
                routes.paths.push(PathRoute { path, kind, route: r });
            }
            if let (Some(backend), None) = (default_backend, &routes.fallback) {
                routes.fallback = Some(route(&host, "", backend));
            }
        }
        if let (Some(backend), None) = (default_backend, &self.default) {
            self.default = Some(route("", "", backend));
        }
        self.conflicts.extend(conflicts);
        self.tls_hosts.extend(tls_hosts);
    }

    fn host_entry(&mut self, host: &str) -> &mut HostRoutes {
        if host.is_empty() {
            &mut self.any_host
        } else if let Some(suffix) = host.strip_prefix("*.") {
            self.wildcard.entry(suffix.to_string()).or_default()
        } else {
            self.exact.entry(host.to_string()).or_default()
        }
    }

    /// The route for a request's host (without port, any case) and path
    /// (without query).
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = host.to_ascii_lowercase();
        let exact = self.exact.get(&host);
        let wildcard = host.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent));
        exact
            .and_then(|r| r.find(path))
            .or_else(|| wildcard.and_then(|r| r.find(path)))
            .or_else(|| self.any_host.find(path))
            .or(self.default.as_ref())
    }

    /// Whether `host` has TLS configured (exactly or by a wildcard).
    pub fn has_tls(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.tls_hosts.contains(&host)
            || host.split_once('.').is_some_and(|(_, parent)| self.tls_hosts.contains(&format!("*.{parent}")))
    }

    pub fn hosts(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

fn age_key(ing: &Ingress) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    (
        ing.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ing.metadata.namespace.clone().unwrap_or_default(),
        ing.metadata.name.clone().unwrap_or_default(),
    )
}

/// `Prefix` paths compare without a trailing `/` (`/foo/` is `/foo`).
fn normalize(path: &str, kind: PathKind) -> String {
    match kind {
        PathKind::Prefix if path.len() > 1 => path.trim_end_matches('/').to_string(),
        _ => path.to_string(),
    }
}

fn path_matches(kind: PathKind, rule: &str, path: &str) -> bool {
    match kind {
        PathKind::Exact => rule == path,
        PathKind::Prefix => {
            rule == "/" || path.strip_prefix(rule).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
    }
}

/// A backend down to its endpoints: the Service port the Ingress names,
/// that port's name in the Endpoints, their ready addresses.
fn resolve(namespace: &str, backend: Option<&IngressServiceBackend>, lookups: &Lookups<'_>, peers: &Peers) -> Target {
    let (service, port) = match service_port(namespace, backend, lookups) {
        Ok(found) => found,
        Err(why) => return Target::Unavailable(why),
    };
    let port_label = port_label(backend);
    let port_name = port.name.unwrap_or_default();
    let addrs = (lookups.endpoints)(&service).map(|eps| ready_addrs(&eps, &port_name)).unwrap_or_default();
    Target::Service { service, port: port_label, endpoints: Endpoints::new(addrs, peers) }
}

/// The ready addresses of an Endpoints for the Service port named
/// `port_name` (empty for a single unnamed port).
pub fn ready_addrs(eps: &K8sEndpoints, port_name: &str) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for subset in eps.subsets.iter().flatten() {
        let port = subset.ports.iter().flatten().find(|p| p.name.as_deref().unwrap_or_default() == port_name);
        let Some(port) = port.and_then(|p| u16::try_from(p.port).ok()) else { continue };
        let ips = subset.addresses.iter().flatten().filter_map(|a| a.ip.parse::<IpAddr>().ok());
        addrs.extend(ips.map(|ip| SocketAddr::new(ip, port)));
    }
    addrs
}

/// The backend's Service (`namespace/name`) and port, or why it has none.
fn service_port(
    namespace: &str,
    backend: Option<&IngressServiceBackend>,
    lookups: &Lookups<'_>,
) -> Result<(String, ServicePort), String> {
    let Some(backend) = backend else {
        return Err("resource backends are not supported".into());
    };
    let key = format!("{namespace}/{}", backend.name);
    let Some(service) = (lookups.service)(&key) else {
        return Err(format!("service {key} not found"));
    };
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(format!("service {key} is an ExternalName service, which is not supported"));
    }
    let wanted = backend.port.as_ref();
    let port = spec.and_then(|s| s.ports.as_ref()).and_then(|ports| {
        ports.iter().find(|p| match wanted {
            Some(w) if w.name.as_deref().is_some_and(|n| !n.is_empty()) => p.name == w.name,
            Some(w) => Some(p.port) == w.number,
            None => false,
        })
    });
    match port {
        Some(port) => Ok((key, port.clone())),
        None => Err(format!("service {key} has no port {}", port_label(Some(backend)))),
    }
}

fn port_label(backend: Option<&IngressServiceBackend>) -> String {
    backend
        .and_then(|b| b.port.as_ref())
        .and_then(|p| p.name.clone().filter(|n| !n.is_empty()).or_else(|| p.number.map(|n| n.to_string())))
        .unwrap_or_default()
}

/// Why each of the Ingress's backends that cannot be served cannot, one
/// message per backend (the Warning Events the controller records).
pub fn backend_problems(ing: &Ingress, lookups: &Lookups<'_>) -> Vec<String> {
    let namespace = ing.metadata.namespace.as_deref().unwrap_or_default();
    let Some(spec) = &ing.spec else { return Vec::new() };
    let backends = spec.default_backend.iter().chain(
        spec.rules.iter().flatten().flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter().map(|p| &p.backend))),
    );
    let mut problems: Vec<String> =
        backends.filter_map(|b| service_port(namespace, b.service.as_ref(), lookups).err()).collect();
    problems.sort();
    problems.dedup();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "demo", "creationTimestamp": created},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    fn backend(svc: &str) -> serde_json::Value {
        json!({"service": {"name": svc, "port": {"number": 80}}})
    }

    fn rule(host: &str, paths: &[(&str, &str, &str)]) -> serde_json::Value {
        let paths: Vec<_> =
            paths.iter().map(|(p, t, svc)| json!({"path": p, "pathType": t, "backend": backend(svc)})).collect();
        json!({"host": host, "http": {"paths": paths}})
    }

    /// Every Service exists with port 80 ("http") and one endpoint whose
    /// last octet tells the Services apart: web=1, api=2, ...
    fn table(ingresses: Vec<Arc<Ingress>>) -> RouteTable {
        let names = ["web", "api", "docs", "old", "new", "fallback", "wild", "any"];
        let service = |key: &str| {
            let name = key.split_once('/').unwrap().1;
            names.contains(&name).then(|| {
                Arc::new(
                    serde_json::from_value::<Service>(
                        json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
                    )
                    .unwrap(),
                )
            })
        };
        let endpoints = |key: &str| {
            let name = key.split_once('/').unwrap().1;
            let i = names.iter().position(|n| *n == name)? + 1;
            Some(Arc::new(
                serde_json::from_value::<K8sEndpoints>(json!({"subsets": [{
                    "addresses": [{"ip": format!("10.0.0.{i}")}],
                    "notReadyAddresses": [{"ip": "10.9.9.9"}],
                    "ports": [{"name": "http", "port": 8080}]}]}))
                .unwrap(),
            ))
        };
        RouteTable::build(ingresses, &Lookups { service: &service, endpoints: &endpoints }, &Peers::default())
    }

    /// The Service a request lands on, or the 503 reason, or "404".
    fn lands(t: &RouteTable, host: &str, path: &str) -> String {
        match t.find(host, path).map(|r| &r.target) {
            Some(Target::Service { service, .. }) => service.trim_start_matches("demo/").to_string(),
            Some(Target::Unavailable(why)) => why.clone(),
            None => "404".into(),
        }
    }

    #[test]
    fn longest_path_wins_and_exact_beats_prefix() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [rule("shop.example.com", &[
                ("/", "Prefix", "web"), ("/api", "Prefix", "api"), ("/api", "Exact", "docs"), ("/api/v1/", "Prefix", "old")])]}),
        )]);
        assert_eq!(lands(&t, "shop.example.com", "/"), "web");
        assert_eq!(lands(&t, "shop.example.com", "/index.html"), "web");
        assert_eq!(lands(&t, "shop.example.com", "/api"), "docs");
        assert_eq!(lands(&t, "shop.example.com", "/api/"), "api");
        assert_eq!(lands(&t, "shop.example.com", "/api/users"), "api");
        assert_eq!(lands(&t, "shop.example.com", "/apis"), "web", "prefix matches whole elements only");
        assert_eq!(lands(&t, "shop.example.com", "/api/v1"), "old", "a trailing slash in a prefix is ignored");
        assert_eq!(lands(&t, "SHOP.example.com", "/api/v1/x"), "old", "hosts match in any case");
    }

    #[test]
    fn hosts_exact_then_wildcard_of_one_label_then_hostless_then_default() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({
            "defaultBackend": backend("fallback"),
            "rules": [
                rule("shop.example.com", &[("/", "Prefix", "web")]),
                rule("*.example.com", &[("/", "Prefix", "wild")]),
                rule("", &[("/any", "Prefix", "any")]),
            ]}),
        )]);
        assert_eq!(lands(&t, "shop.example.com", "/"), "web");
        assert_eq!(lands(&t, "blog.example.com", "/"), "wild");
        assert_eq!(lands(&t, "a.blog.example.com", "/any/x"), "any", "a wildcard covers one label only");
        assert_eq!(lands(&t, "example.com", "/"), "fallback");
        assert_eq!(lands(&t, "unknown.test", "/"), "fallback");
    }

    #[test]
    fn an_unknown_host_without_default_backend_finds_nothing() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [rule("shop.example.com", &[("/shop", "Prefix", "web")])]}),
        )]);
        assert_eq!(lands(&t, "other.example.com", "/"), "404");
        assert_eq!(lands(&t, "shop.example.com", "/"), "404", "no path matches and no defaultBackend");
    }

    #[test]
    fn ingresses_merge_per_host_and_the_older_wins_a_conflict() {
        let newer = ingress(
            "newer",
            "2026-02-01T00:00:00Z",
            json!({"rules": [rule("shop.example.com", &[("/", "Prefix", "new"), ("/docs", "Prefix", "docs")])]}),
        );
        let older = ingress(
            "older",
            "2026-01-01T00:00:00Z",
            json!({"rules": [rule("shop.example.com", &[("/", "Prefix", "old"), ("/api", "Prefix", "api")])]}),
        );
        let t = table(vec![newer, older]);
        assert_eq!(lands(&t, "shop.example.com", "/"), "old");
        assert_eq!(lands(&t, "shop.example.com", "/api/x"), "api");
        assert_eq!(lands(&t, "shop.example.com", "/docs"), "docs");
        assert_eq!(
            t.conflicts,
            vec![Conflict {
                ignored: "demo/newer".into(),
                winner: "demo/older".into(),
                host: "shop.example.com".into(),
                path: "/".into()
            }]
        );
    }

    #[test]
    fn a_host_without_a_matching_path_uses_its_ingress_default_backend() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"defaultBackend": backend("fallback"), "rules": [rule("shop.example.com", &[("/api", "Exact", "api")])]}),
        )]);
        assert_eq!(lands(&t, "shop.example.com", "/api"), "api");
        assert_eq!(lands(&t, "shop.example.com", "/other"), "fallback");
    }

    #[test]
    fn backends_resolve_to_ready_endpoints_on_the_target_port() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [rule("shop.example.com", &[("/", "Prefix", "api")])]}),
        )]);
        let Some(Target::Service { endpoints, port, .. }) = t.find("shop.example.com", "/").map(|r| &r.target) else {
            panic!("not a service target");
        };
        assert_eq!(port, "80");
        assert_eq!(endpoints.addrs().collect::<Vec<_>>(), vec!["10.0.0.2:8080".parse().unwrap()]);
    }

    #[test]
    fn a_missing_service_or_port_is_named() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [
                rule("a.example.com", &[("/", "Prefix", "nope")]),
                {"host": "b.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"name": "grpc"}}}}]}},
            ]}),
        )]);
        assert_eq!(lands(&t, "a.example.com", "/"), "service demo/nope not found");
        assert_eq!(lands(&t, "b.example.com", "/"), "service demo/web has no port grpc");
    }

    #[test]
    fn backend_problems_name_each_unservable_backend_once() {
        let ing = ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"defaultBackend": backend("nope"), "rules": [
                rule("a.example.com", &[("/", "Prefix", "nope"), ("/web", "Prefix", "web")]),
                rule("b.example.com", &[("/", "Prefix", "gone")]),
            ]}),
        );
        let service = |key: &str| {
            (key == "demo/web").then(|| {
                Arc::new(serde_json::from_value::<Service>(json!({"spec": {"ports": [{"port": 80}]}})).unwrap())
            })
        };
        let none = |_: &str| None;
        let problems = backend_problems(&ing, &Lookups { service: &service, endpoints: &none });
        assert_eq!(problems, vec!["service demo/gone not found", "service demo/nope not found"]);
    }

    #[test]
    fn tls_hosts_are_known_exactly_and_by_wildcard() {
        let t = table(vec![ingress(
            "a",
            "2026-01-01T00:00:00Z",
            json!({"tls": [{"hosts": ["shop.example.com", "*.apps.example.com"], "secretName": "s"}],
                   "rules": [rule("shop.example.com", &[("/", "Prefix", "web")])]}),
        )]);
        assert!(t.has_tls("shop.example.com"));
        assert!(t.has_tls("x.apps.example.com"));
        assert!(!t.has_tls("example.com"));
        assert!(t.find("shop.example.com", "/").unwrap().tls);
    }
}
