//! The Endpoints controller, after Kubernetes' `endpoints_controller.go`:
//! every Service with a selector gets an Endpoints object of the same name
//! listing the pods behind it.
//!
//! - A pod counts once it has a podIP and is not being deleted or finished;
//!   Ready pods go to `addresses`, the others to `notReadyAddresses` (all to
//!   `addresses` with `publishNotReadyAddresses`).
//! - Each Service port's targetPort is resolved per pod: a number as is, a
//!   name through the pod's container ports. A pod lacking a named port is
//!   left out for that port, so pods are grouped into subsets by the set of
//!   ports they resolve to (Kubernetes' `RepackSubsets`).
//! - Services without a selector are left alone: their Endpoints are the
//!   user's. Endpoints this controller wrote carry [`ENDPOINTS_MANAGED_BY_LABEL`] and are
//!   deleted (by name, they have no owner) when their Service goes.
//! - Writes happen only when the desired object differs from the cached one.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_client::{key_of, Action, Client, InformerEvent, Reconcile, Store, WorkQueue};

use super::{Context, Wiring};
use crate::error::{Error, Result};
use crate::util;
use skiff_api::well_known::ENDPOINTS_MANAGED_BY_LABEL;

const MANAGER: &str = "endpoint-controller";
/// Kubernetes marks the Endpoints of headless Services with this label.
const HEADLESS: &str = "service.kubernetes.io/headless";

pub struct EndpointsController {
    client: Client,
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    pods: Store<Pod>,
}

pub fn start(ctx: &Context, w: &mut Wiring<'_>) {
    let queue = WorkQueue::new();
    {
        let queue = queue.clone();
        w.on_events(&ctx.caches.services, move |ev| queue.add(ev.key()));
    }
    {
        // Someone changed or deleted an Endpoints: put it back as it should be.
        let queue = queue.clone();
        w.on_events(&ctx.caches.endpoints, move |ev| queue.add(ev.key()));
    }
    {
        let queue = queue.clone();
        let services = ctx.caches.services.clone();
        w.on_events(&ctx.caches.pods, move |ev| match ev {
            InformerEvent::Added(pod) | InformerEvent::Deleted(pod) => enqueue_selecting(&queue, &services, &pod),
            InformerEvent::Modified { old, new } => {
                enqueue_selecting(&queue, &services, &new);
                if old.metadata.labels != new.metadata.labels {
                    enqueue_selecting(&queue, &services, &old);
                }
            }
        });
    }
    let controller = EndpointsController {
        client: ctx.client.clone(),
        services: ctx.caches.services.clone(),
        endpoints: ctx.caches.endpoints.clone(),
        pods: ctx.caches.pods.clone(),
    };
    w.run(ctx, controller, queue);
}

/// The Service's selector, if it has a non-empty one.
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())
}

/// Every Service in the pod's namespace whose selector matches it.
fn enqueue_selecting(queue: &WorkQueue<String>, services: &Store<Service>, pod: &Pod) {
    let ns = util::namespace(&pod.metadata);
    for svc in services.list() {
        if util::namespace(&svc.metadata) != ns {
            continue;
        }
        if let Some(sel) = selector(&svc) {
            if util::labels_contain(pod.metadata.labels.as_ref(), Some(sel)) {
                queue.add(key_of(svc.as_ref()));
            }
        }
    }
}

impl Reconcile for EndpointsController {
    const NAME: &'static str = "endpoints";
    type Error = Error;

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let existing = self.endpoints.get(key);
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(svc) = self.services.get(key) else {
            if existing.is_some_and(|e| is_managed(&e)) {
                self.delete(ns, name, key).await?;
            }
            return Ok(Action::done());
        };
        let Some(sel) = selector(&svc) else { return Ok(Action::done()) };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| {
                util::namespace(&p.metadata) == ns && util::labels_contain(p.metadata.labels.as_ref(), Some(sel))
            })
            .collect();
        let spec = svc.spec.clone().unwrap_or_default();
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        let subsets = desired_subsets(name, spec.ports.as_deref().unwrap_or_default(), &pods, publish_not_ready);
        let labels = desired_labels(&svc);
        let api = self.client.api::<Endpoints>(ns);
        match existing {
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(ns.to_string()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets: (!subsets.is_empty()).then_some(subsets),
                };
                match api.create(&ep).await {
                    Ok(_) => tracing::debug!(service = %key, "endpoints created"),
                    // The cache is behind; its Added event brings the key back.
                    Err(e) if e.is_already_exists() => {}
                    Err(source) => return Err(Error::Create { kind: "Endpoints", namespace: ns.into(), source }),
                }
            }
            Some(ep) => {
                let current = ep.subsets.clone().unwrap_or_default();
                if current == subsets && ep.metadata.labels.as_ref() == Some(&labels) {
                    return Ok(Action::done());
                }
                let mut updated = (*ep).clone();
                updated.subsets = (!subsets.is_empty()).then_some(subsets);
                updated.metadata.labels = Some(labels);
                match api.update(&updated).await {
                    Ok(_) => tracing::debug!(service = %key, "endpoints updated"),
                    Err(e) if e.is_not_found() => {}
                    Err(source) => return Err(Error::Update { kind: "Endpoints", key: key.into(), source }),
                }
            }
        }
        Ok(Action::done())
    }
}

impl EndpointsController {
    async fn delete(&self, ns: &str, name: &str, key: &str) -> Result<()> {
        match self.client.api::<Endpoints>(ns).delete(name).await {
            Ok(_) => {
                tracing::debug!(service = %key, "service gone: endpoints deleted");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(Error::Delete { kind: "Endpoints".into(), key: key.into(), source }),
        }
    }
}

fn is_managed(ep: &Endpoints) -> bool {
    ep.metadata.labels.as_ref().and_then(|l| l.get(ENDPOINTS_MANAGED_BY_LABEL)).is_some_and(|v| v == MANAGER)
}

/// The Service's labels, plus ours (and the headless mark).
fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(ENDPOINTS_MANAGED_BY_LABEL.into(), MANAGER.into());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS.into(), String::new());
    } else {
        labels.remove(HEADLESS);
    }
    labels
}

/// Whether a pod belongs in Endpoints at all: it has an IP and is neither
/// being deleted nor finished.
fn is_endpoint(pod: &Pod) -> bool {
    let has_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).is_some_and(|ip| !ip.is_empty());
    has_ip && util::is_active(pod)
}

/// The port a Service port reaches on `pod`: a number as is, a name
/// through the pod's container ports (None when the pod has no such port).
fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            // "8080" as a string is a number too, as Kubernetes reads it.
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        },
    }
}

/// The subsets of Service `service` with `ports` over the candidate `pods`
/// (already selected by label): pods grouped by the set of ports they
/// resolve to, addresses sorted by IP, subsets by their ports, so that the
/// same state always gives the same object. A pod whose subdomain is the
/// Service's name is listed with its hostname (a StatefulSet's pods), which
/// gives it a DNS name under a headless Service.
pub fn desired_subsets(
    service: &str,
    ports: &[ServicePort],
    pods: &[Arc<Pod>],
    publish_not_ready: bool,
) -> Vec<EndpointSubset> {
    // Port set (name, port, protocol, appProtocol) → (ready, not ready).
    type PortKey = Vec<(String, i32, String, Option<String>)>;
    let mut groups: BTreeMap<PortKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| is_endpoint(p)) {
        let mut resolved: PortKey = ports
            .iter()
            .filter_map(|sp| {
                let target = resolve_target_port(sp, pod)?;
                let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((sp.name.clone().unwrap_or_default(), target, protocol, sp.app_protocol.clone()))
            })
            .collect();
        // A Service with ports none of which this pod has: leave it out
        // (a port-less headless Service lists every pod).
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        resolved.sort();
        let address = EndpointAddress {
            ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            hostname: pod
                .spec
                .as_ref()
                .filter(|s| s.subdomain.as_deref() == Some(service))
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let group = groups.entry(resolved).or_default();
        if publish_not_ready || util::is_ready(pod) {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
                (a.ip.as_str(), a.target_ref.as_ref().and_then(|r| r.name.as_deref()))
                    .cmp(&(b.ip.as_str(), b.target_ref.as_ref().and_then(|r| r.name.as_deref())))
            };
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .map(|(name, port, protocol, app_protocol)| EndpointPort {
                    name: (!name.is_empty()).then_some(name),
                    port,
                    protocol: Some(protocol),
                    app_protocol,
                })
                .collect();
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus};

    fn pod(name: &str, ip: &str, ready: bool, named_ports: &[(&str, i32)]) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        named_ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn port(name: &str, port: i32, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        a.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_apart() {
        let pods =
            vec![pod("b", "10.42.0.2", true, &[]), pod("a", "10.42.0.1", true, &[]), pod("c", "10.42.0.3", false, &[])];
        let subsets = desired_subsets("svc", &[port("http", 80, IntOrString::Int(8080))], &pods, false);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.1", "10.42.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.42.0.3"]);
        let ports = subsets[0].ports.as_ref().unwrap();
        assert_eq!((ports[0].name.as_deref(), ports[0].port), (Some("http"), 8080));
        let target = subsets[0].addresses.as_ref().unwrap()[0].target_ref.as_ref().unwrap();
        assert_eq!(
            (target.kind.as_deref(), target.name.as_deref(), target.uid.as_deref()),
            (Some("Pod"), Some("a"), Some("uid-a"))
        );

        let published = desired_subsets("svc", &[port("http", 80, IntOrString::Int(8080))], &pods, true);
        assert_eq!(ips(&published[0].addresses).len(), 3);
    }

    #[test]
    fn pods_of_the_services_subdomain_are_listed_by_hostname() {
        let mut member = (*pod("db-0", "10.42.0.1", true, &[])).clone();
        let spec = member.spec.as_mut().unwrap();
        spec.hostname = Some("db-0".into());
        spec.subdomain = Some("db".into());
        let mut stranger = member.clone();
        stranger.metadata.name = Some("other".into());
        stranger.status.as_mut().unwrap().pod_ip = Some("10.42.0.2".into());
        stranger.spec.as_mut().unwrap().subdomain = Some("elsewhere".into());
        let subsets = desired_subsets("db", &[], &[Arc::new(member), Arc::new(stranger)], false);
        let hostnames: Vec<_> = subsets[0].addresses.iter().flatten().map(|a| a.hostname.as_deref()).collect();
        assert_eq!(hostnames, [Some("db-0"), None]);
    }

    #[test]
    fn pods_without_ip_or_deleting_are_left_out() {
        let mut deleting = (*pod("d", "10.42.0.4", true, &[])).clone();
        deleting.metadata.deletion_timestamp = Some(util::now_time());
        let pods = vec![pod("a", "", true, &[]), Arc::new(deleting)];
        assert!(desired_subsets("svc", &[port("http", 80, IntOrString::Int(80))], &pods, false).is_empty());
    }

    #[test]
    fn named_ports_resolve_per_pod_and_group_subsets() {
        let pods = vec![
            pod("a", "10.42.0.1", true, &[("web", 8080)]),
            pod("b", "10.42.0.2", true, &[("web", 9090)]),
            pod("c", "10.42.0.3", true, &[("other", 7070)]),
            pod("d", "10.42.0.4", true, &[("web", 8080)]),
        ];
        let ports = [port("http", 80, IntOrString::String("web".into()))];
        let subsets = desired_subsets("svc", &ports, &pods, false);
        // c lacks the port entirely; a and d share 8080, b has 9090.
        assert_eq!(subsets.len(), 2);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.1", "10.42.0.4"]);
        assert_eq!(subsets[1].ports.as_ref().unwrap()[0].port, 9090);
        assert_eq!(ips(&subsets[1].addresses), ["10.42.0.2"]);

        // With a second, numeric port, c keeps that one in a subset of its own.
        let two = [port("http", 80, IntOrString::String("web".into())), port("metrics", 9100, IntOrString::Int(9100))];
        let subsets = desired_subsets("svc", &two, &pods, false);
        assert_eq!(subsets.len(), 3);
        let only_metrics = subsets.iter().find(|s| s.ports.as_ref().unwrap().len() == 1).unwrap();
        assert_eq!(ips(&only_metrics.addresses), ["10.42.0.3"]);
    }

    #[test]
    fn labels_mark_ours_and_headless() {
        let mut svc = Service::default();
        svc.metadata.labels = Some(BTreeMap::from([("app".to_string(), "x".to_string())]));
        svc.spec =
            Some(k8s_openapi::api::core::v1::ServiceSpec { cluster_ip: Some("None".into()), ..Default::default() });
        let labels = desired_labels(&svc);
        assert_eq!(labels.get("app").map(String::as_str), Some("x"));
        assert!(labels.contains_key(HEADLESS));
        let ep = Endpoints { metadata: ObjectMeta { labels: Some(labels), ..Default::default() }, subsets: None };
        assert!(is_managed(&ep));
        assert!(!is_managed(&Endpoints::default()));
    }
}
