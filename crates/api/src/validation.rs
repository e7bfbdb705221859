//! Validation of objects after defaulting: names, labels, and the rules per
//! kind that later components rely on. Every problem is reported with the
//! path of its field, and all problems are reported at once.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core, networking::v1 as networking};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{FieldError, LabelSelector};

pub(crate) mod rbac;

/// Collects field errors under a path prefix.
#[derive(Default)]
pub(crate) struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;

/// Why `s` is not a DNS-1123 label (`web-1`), if it is not.
pub(crate) fn dns_label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > DNS_LABEL_MAX {
        return Some(format!("must be no more than {DNS_LABEL_MAX} characters"));
    }
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    (!(ok_chars && ok_ends)).then(|| {
        format!("{s:?} is not a valid DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit")
    })
}

/// Why `s` is not a DNS-1123 subdomain (`web.example-1`), if it is not.
pub fn dns_subdomain_problem(s: &str) -> Option<String> {
    if s.len() > DNS_SUBDOMAIN_MAX {
        return Some(format!("must be no more than {DNS_SUBDOMAIN_MAX} characters"));
    }
    if s.is_empty() || s.split('.').any(|part| dns_label_problem(part).is_some()) {
        return Some(format!(
            "{s:?} is not a valid DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    None
}

fn qualified_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= DNS_LABEL_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    (!ok).then(|| {
        "must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".to_string()
    })
}

/// Why `key` is not a valid label or annotation key (`[prefix/]name`).
pub(crate) fn label_key_problem(key: &str) -> Option<String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain_problem(prefix).map(|p| format!("prefix {p}")).or_else(|| qualified_name_problem(name))
        }
        None => qualified_name_problem(key),
    }
}

/// Why `value` is not a valid label value (may be empty).
pub(crate) fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        qualified_name_problem(value)
    }
}

/// Why `name` cannot be one segment of a URL path, if it cannot. RBAC
/// objects are named this loosely (`system:kube-scheduler`), as in Kubernetes.
pub(crate) fn path_segment_problem(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("{name:?} may not be used as a name"));
    }
    name.contains(['/', '%']).then(|| format!("{name:?} may not contain '/' or '%'"))
}

/// What an object's name must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// A DNS-1123 subdomain: most kinds.
    Subdomain,
    /// A DNS-1123 label: kinds that are DNS names themselves (Namespace, Service).
    Label,
    /// Anything that fits in a URL path segment: the RBAC kinds.
    PathSegment,
}

impl NameRule {
    fn problem(self, name: &str) -> Option<String> {
        match self {
            NameRule::Subdomain => dns_subdomain_problem(name),
            NameRule::Label => dns_label_problem(name),
            NameRule::PathSegment => path_segment_problem(name),
        }
    }
}

const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Rules every object's metadata follows; `names` says what its name must be.
pub(crate) fn metadata(meta: &ObjectMeta, names: NameRule, errs: &mut Errors) {
    match meta.name.as_deref() {
        None | Some("") => errs.add("metadata.name", "required"),
        Some(name) => {
            if let Some(p) = names.problem(name) {
                errs.add("metadata.name", p);
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        if let Some(p) = dns_label_problem(ns) {
            errs.add("metadata.namespace", p);
        }
    }
    labels(meta.labels.as_ref(), "metadata.labels", errs);
    let mut annotation_bytes = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        if let Some(p) = label_key_problem(k) {
            errs.add(format!("metadata.annotations[{k:?}]"), p);
        }
        annotation_bytes += k.len() + v.len();
    }
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        errs.add(
            "metadata.annotations",
            format!("{annotation_bytes} bytes, more than the limit of {ANNOTATIONS_MAX_BYTES}"),
        );
    }
}

pub(crate) fn labels(labels: Option<&BTreeMap<String, String>>, path: &str, errs: &mut Errors) {
    for (k, v) in labels.into_iter().flatten() {
        if let Some(p) = label_key_problem(k) {
            errs.add(format!("{path}[{k:?}]"), format!("key {p}"));
        }
        if let Some(p) = label_value_problem(v) {
            errs.add(format!("{path}[{k:?}]"), format!("value {v:?} {p}"));
        }
    }
}

pub(crate) fn one_of(value: Option<&str>, allowed: &[&str], path: &str, errs: &mut Errors) {
    if let Some(v) = value {
        if !allowed.contains(&v) {
            errs.add(path, format!("unsupported value {v:?}: must be one of {}", allowed.join(", ")));
        }
    }
}

fn port(value: i32, path: &str, errs: &mut Errors) {
    if !(1..=65535).contains(&value) {
        errs.add(path, format!("{value} is not a valid port number (1-65535)"));
    }
}

pub(crate) fn quantities(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    path: &str,
    errs: &mut Errors,
) {
    for (name, q) in map.into_iter().flatten() {
        match crate::quantity::parse_milli(&q.0) {
            Err(e) => errs.add(format!("{path}.{name}"), e),
            Ok(v) if v < 0 => errs.add(format!("{path}.{name}"), "must not be negative"),
            Ok(_) => {}
        }
    }
}

fn container(c: &core::Container, path: &str, errs: &mut Errors) {
    if let Some(p) = dns_label_problem(&c.name) {
        errs.add(format!("{path}.name"), p);
    }
    if c.image.as_deref().is_none_or(str::is_empty) {
        errs.add(format!("{path}.image"), "required");
    }
    one_of(
        c.image_pull_policy.as_deref(),
        &["Always", "IfNotPresent", "Never"],
        &format!("{path}.imagePullPolicy"),
        errs,
    );
    for (i, p) in c.ports.iter().flatten().enumerate() {
        port(p.container_port, &format!("{path}.ports[{i}].containerPort"), errs);
        one_of(p.protocol.as_deref(), &["TCP", "UDP", "SCTP"], &format!("{path}.ports[{i}].protocol"), errs);
    }
    if let Some(r) = &c.resources {
        quantities(r.requests.as_ref(), &format!("{path}.resources.requests"), errs);
        quantities(r.limits.as_ref(), &format!("{path}.resources.limits"), errs);
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.add(format!("{path}.env[{i}].name"), "required");
        }
    }
}

/// Volume names become folder names on the node, so they must be DNS labels
/// (no '/', no '..'), and unique, as a mount finds its volume by name.
fn volumes<'a>(volumes: &'a [core::Volume], path: &str, errs: &mut Errors) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let name_path = format!("{path}.volumes[{i}].name");
        if let Some(p) = dns_label_problem(&v.name) {
            errs.add(name_path, p);
        } else if !names.insert(v.name.as_str()) {
            errs.add(name_path, format!("duplicate volume name {:?}", v.name));
        }
    }
    names
}

fn volume_mounts(c: &core::Container, path: &str, volumes: &HashSet<&str>, errs: &mut Errors) {
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            errs.add(format!("{path}.volumeMounts[{i}].name"), format!("no volume named {:?}", m.name));
        }
    }
}

/// A toleration's seconds only count down a NoExecute taint; Kubernetes
/// refuses them with any other effect.
fn toleration(t: &core::Toleration, path: &str, errs: &mut Errors) {
    one_of(t.operator.as_deref(), &["Exists", "Equal"], &format!("{path}.operator"), errs);
    let effect = t.effect.as_deref().filter(|e| !e.is_empty());
    one_of(effect, &["NoSchedule", "PreferNoSchedule", "NoExecute"], &format!("{path}.effect"), errs);
    if t.operator.as_deref() == Some("Exists") && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
        errs.add(format!("{path}.value"), "must be empty when operator is Exists");
    }
    if t.toleration_seconds.is_some() && effect != Some("NoExecute") {
        errs.add(format!("{path}.effect"), "must be NoExecute when tolerationSeconds is set");
    }
}

/// Checks a pod's spec. `claims` are volumes the pod will have without
/// naming them: a StatefulSet's volumeClaimTemplates.
pub(crate) fn pod_spec(spec: &core::PodSpec, path: &str, claims: &[&str], errs: &mut Errors) {
    if spec.containers.is_empty() {
        errs.add(format!("{path}.containers"), "at least one container is required");
    }
    let mut known_volumes = volumes(spec.volumes.as_deref().unwrap_or_default(), path, errs);
    known_volumes.extend(claims);
    let mut names = HashSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    let mut index = BTreeMap::<&str, usize>::new();
    for (list, c) in all {
        let i = index.entry(list).or_default();
        let cpath = format!("{path}.{list}[{i}]");
        *i += 1;
        container(c, &cpath, errs);
        volume_mounts(c, &cpath, &known_volumes, errs);
        if !names.insert(c.name.as_str()) {
            errs.add(format!("{cpath}.name"), format!("duplicate container name {:?}", c.name));
        }
    }
    one_of(spec.restart_policy.as_deref(), &["Always", "OnFailure", "Never"], &format!("{path}.restartPolicy"), errs);
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        toleration(t, &format!("{path}.tolerations[{i}]"), errs);
    }
    labels(spec.node_selector.as_ref(), &format!("{path}.nodeSelector"), errs);
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            errs.add(format!("{path}.terminationGracePeriodSeconds"), "must not be negative");
        }
    }
}

pub(crate) fn non_negative(value: Option<i32>, path: &str, errs: &mut Errors) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errs.add(path, format!("{v} must be greater than or equal to 0"));
    }
}

/// A workload's selector must be present and must select its own template,
/// or its controller would create pods it never sees.
pub(crate) fn workload_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    template: &core::PodTemplateSpec,
    path: &str,
    errs: &mut Errors,
) {
    let empty = selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty);
    if empty {
        errs.add(format!("{path}.selector"), "required: an empty selector would select every pod");
        return;
    }
    labels(selector.match_labels.as_ref(), &format!("{path}.selector.matchLabels"), errs);
    match LabelSelector::from_k8s(selector) {
        Err(e) => errs.add(format!("{path}.selector"), e.to_string()),
        Ok(sel) => {
            let template_labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            if !sel.matches(&template_labels) {
                errs.add(format!("{path}.template.metadata.labels"), "`selector` does not match template `labels`");
            }
        }
    }
    labels(
        template.metadata.as_ref().and_then(|m| m.labels.as_ref()),
        &format!("{path}.template.metadata.labels"),
        errs,
    );
}

fn int_or_percent(v: Option<&IntOrString>, path: &str, errs: &mut Errors) -> Option<bool> {
    match v? {
        IntOrString::Int(i) if *i < 0 => {
            errs.add(path, "must not be negative");
            None
        }
        IntOrString::Int(i) => Some(*i == 0),
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
            Some(p) if p <= 100 => Some(p == 0),
            _ => {
                errs.add(path, format!("{s:?} must be an integer or a percentage from 0% to 100%"));
                None
            }
        },
    }
}

pub(crate) fn deployment_strategy(s: Option<&apps::DeploymentStrategy>, path: &str, errs: &mut Errors) {
    let Some(s) = s else { return };
    one_of(s.type_.as_deref(), &["RollingUpdate", "Recreate"], &format!("{path}.type"), errs);
    if let Some(ru) = &s.rolling_update {
        if s.type_.as_deref() == Some("Recreate") {
            errs.add(format!("{path}.rollingUpdate"), "may not be set when type is Recreate");
        }
        let surge_zero = int_or_percent(ru.max_surge.as_ref(), &format!("{path}.rollingUpdate.maxSurge"), errs);
        let unavail_zero =
            int_or_percent(ru.max_unavailable.as_ref(), &format!("{path}.rollingUpdate.maxUnavailable"), errs);
        if surge_zero == Some(true) && unavail_zero == Some(true) {
            errs.add(format!("{path}.rollingUpdate.maxUnavailable"), "may not be 0 when maxSurge is 0");
        }
    }
}

pub(crate) fn service_spec(spec: &core::ServiceSpec, errs: &mut Errors) {
    one_of(spec.type_.as_deref(), &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"], "spec.type", errs);
    one_of(spec.session_affinity.as_deref(), &["None", "ClientIP"], "spec.sessionAffinity", errs);
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && spec.type_.as_deref() != Some("ExternalName") && spec.cluster_ip.as_deref() != Some("None") {
        errs.add("spec.ports", "at least one port is required");
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        port(p.port, &format!("{path}.port"), errs);
        one_of(p.protocol.as_deref(), &["TCP", "UDP", "SCTP"], &format!("{path}.protocol"), errs);
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => {
                errs.add(format!("{path}.name"), "required when a service has more than one port")
            }
            Some(n) if !n.is_empty() => {
                if let Some(problem) = dns_label_problem(n) {
                    errs.add(format!("{path}.name"), problem);
                }
                if !names.insert(n) {
                    errs.add(format!("{path}.name"), format!("duplicate port name {n:?}"));
                }
            }
            _ => {}
        }
        // The node port range is the apiserver's flag: its allocator checks it.
        if let Some(np) = p.node_port.filter(|np| !(0..=65535).contains(np)) {
            errs.add(format!("{path}.nodePort"), format!("{np} is not a valid port number"));
        }
        if let Some(IntOrString::Int(t)) = &p.target_port {
            port(*t, &format!("{path}.targetPort"), errs);
        }
    }
    labels(spec.selector.as_ref(), "spec.selector", errs);
}

/// An Ingress as Kubernetes validates it: something to route (rules or a
/// default backend), hosts that are DNS names (a leading `*.` allowed, no
/// port, no IP address), a known pathType with absolute paths, and
/// backends naming exactly one Service port or resource.
pub(crate) fn ingress_spec(spec: Option<&networking::IngressSpec>, errs: &mut Errors) {
    let Some(spec) = spec else {
        return errs.add("spec", "required: rules or a defaultBackend");
    };
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && spec.default_backend.is_none() {
        errs.add("spec", "either defaultBackend or rules must be specified");
    }
    if let Some(b) = &spec.default_backend {
        ingress_backend(b, "spec.defaultBackend", errs);
    }
    for (i, rule) in rules.iter().enumerate() {
        if let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) {
            ingress_host(host, &format!("spec.rules[{i}].host"), errs);
        }
        for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let path = format!("spec.rules[{i}].http.paths[{j}]");
            match p.path_type.as_str() {
                "Exact" | "Prefix" => {
                    if !p.path.as_deref().is_some_and(|v| v.starts_with('/')) {
                        errs.add(
                            format!("{path}.path"),
                            format!("{:?} must be an absolute path", p.path.as_deref().unwrap_or("")),
                        );
                    }
                }
                "ImplementationSpecific" => {}
                "" => errs.add(format!("{path}.pathType"), "required: one of Exact, Prefix, ImplementationSpecific"),
                other => errs.add(
                    format!("{path}.pathType"),
                    format!("unsupported value {other:?}: must be one of Exact, Prefix, ImplementationSpecific"),
                ),
            }
            ingress_backend(&p.backend, &format!("{path}.backend"), errs);
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        for (j, host) in tls.hosts.iter().flatten().enumerate() {
            ingress_host(host, &format!("spec.tls[{i}].hosts[{j}]"), errs);
        }
    }
}

/// `spec.controller` names the implementation (`skiff.io/ingress-controller`):
/// a domain-prefixed path, as Kubernetes requires.
pub(crate) fn ingress_class_spec(spec: Option<&networking::IngressClassSpec>, errs: &mut Errors) {
    let controller = spec.and_then(|s| s.controller.as_deref()).unwrap_or_default();
    if controller.is_empty() {
        return errs.add("spec.controller", "required: the controller that implements the class");
    }
    let domain = controller.split_once('/').map(|(d, _)| d);
    if controller.len() > 250 || domain.is_none_or(|d| dns_subdomain_problem(d).is_some()) {
        errs.add(
            "spec.controller",
            format!("{controller:?} must be a domain-prefixed path like skiff.io/ingress-controller"),
        );
    }
}

fn ingress_host(host: &str, path: &str, errs: &mut Errors) {
    if host.contains(':') {
        return errs.add(path, format!("{host:?} must be a host name without a port"));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return errs.add(path, format!("{host:?} must be a DNS name, not an IP address"));
    }
    if let Some(problem) = dns_subdomain_problem(host.strip_prefix("*.").unwrap_or(host)) {
        errs.add(path, format!("{problem} (a leading '*.' is allowed)"));
    }
}

fn ingress_backend(b: &networking::IngressBackend, path: &str, errs: &mut Errors) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => errs.add(path, "service and resource are mutually exclusive"),
        (None, None) => errs.add(path, "one of service or resource is required"),
        (None, Some(_)) => {}
        (Some(svc), None) => {
            if let Some(problem) = dns_label_problem(&svc.name) {
                errs.add(format!("{path}.service.name"), problem);
            }
            let port_path = format!("{path}.service.port");
            match svc.port.as_ref().map(|p| (p.name.as_deref().filter(|n| !n.is_empty()), p.number)) {
                None | Some((None, None)) => errs.add(port_path, "a port name or number is required"),
                Some((Some(_), Some(_))) => errs.add(port_path, "name and number are mutually exclusive"),
                Some((None, Some(n))) => port(n, &format!("{port_path}.number"), errs),
                Some((Some(n), None)) => {
                    if let Some(problem) = dns_label_problem(n) {
                        errs.add(format!("{port_path}.name"), problem);
                    }
                }
            }
        }
    }
}

pub(crate) fn data_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &str, errs: &mut Errors) {
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= DNS_SUBDOMAIN_MAX
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            errs.add(format!("{path}[{k:?}]"), "a key must consist of letters, digits, '-', '_' or '.'");
        }
    }
}

/// A volume's or claim's access modes: at least one, each known.
pub(crate) fn access_modes(modes: Option<&[String]>, path: &str, errs: &mut Errors) {
    let modes = modes.unwrap_or_default();
    if modes.is_empty() {
        errs.add(path, "at least one access mode is required");
    }
    for (i, mode) in modes.iter().enumerate() {
        let allowed = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
        one_of(Some(mode), &allowed, &format!("{path}[{i}]"), errs);
    }
}

/// One metric of a HorizontalPodAutoscaler: skiff's controller scales on
/// resource metrics (cpu, memory) of the target's pods.
pub(crate) fn hpa_metric(metric: &k8s_openapi::api::autoscaling::v2::MetricSpec, path: &str, errs: &mut Errors) {
    if metric.type_ != "Resource" {
        return errs.add(format!("{path}.type"), format!("unsupported value {:?}: must be Resource", metric.type_));
    }
    let Some(resource) = &metric.resource else {
        return errs.add(format!("{path}.resource"), "required for type Resource");
    };
    one_of(Some(resource.name.as_str()), &["cpu", "memory"], &format!("{path}.resource.name"), errs);
    let target = &resource.target;
    let at = format!("{path}.resource.target");
    match target.type_.as_str() {
        "Utilization" => match target.average_utilization {
            Some(u) if u > 0 => {}
            _ => errs.add(format!("{at}.averageUtilization"), "must be greater than 0 for type Utilization"),
        },
        "AverageValue" => match &target.average_value {
            Some(q) => quantities(Some(&[("averageValue".to_string(), q.clone())].into()), &at, errs),
            None => errs.add(format!("{at}.averageValue"), "required for type AverageValue"),
        },
        other => {
            errs.add(format!("{at}.type"), format!("unsupported value {other:?}: must be Utilization or AverageValue"))
        }
    }
}

/// The most indexes an Indexed Job may have, as in Kubernetes.
const MAX_JOB_INDEXES: i32 = 100_000;

/// A Job's spec, at `path` (`spec`, or `spec.jobTemplate.spec` in a
/// CronJob). The pod template's own rules are the caller's.
pub(crate) fn job_spec(spec: &batch::JobSpec, path: &str, errs: &mut Errors) {
    non_negative(spec.parallelism, &format!("{path}.parallelism"), errs);
    non_negative(spec.completions, &format!("{path}.completions"), errs);
    non_negative(spec.backoff_limit, &format!("{path}.backoffLimit"), errs);
    non_negative(spec.ttl_seconds_after_finished, &format!("{path}.ttlSecondsAfterFinished"), errs);
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.add(format!("{path}.activeDeadlineSeconds"), format!("{d} must be greater than 0"));
    }
    let mode = spec.completion_mode.as_deref();
    one_of(mode, &["NonIndexed", "Indexed"], &format!("{path}.completionMode"), errs);
    if mode == Some("Indexed") {
        match spec.completions {
            None => errs.add(format!("{path}.completions"), "required when completionMode is Indexed"),
            Some(c) if c > MAX_JOB_INDEXES => errs.add(
                format!("{path}.completions"),
                format!("{c} must be at most {MAX_JOB_INDEXES} when completionMode is Indexed"),
            ),
            Some(_) => {}
        }
        if let Some(p) = spec.parallelism.filter(|p| *p > MAX_JOB_INDEXES) {
            errs.add(
                format!("{path}.parallelism"),
                format!("{p} must be at most {MAX_JOB_INDEXES} when completionMode is Indexed"),
            );
        }
    }
    if spec.manual_selector == Some(true) || spec.selector.is_some() {
        let selector = spec.selector.clone().unwrap_or_default();
        workload_selector(&selector, &spec.template, path, errs);
    }
    if let Some(policy) = &spec.pod_failure_policy {
        pod_failure_policy(policy, spec, &format!("{path}.podFailurePolicy"), errs);
    }
}

fn pod_failure_policy(policy: &batch::PodFailurePolicy, spec: &batch::JobSpec, path: &str, errs: &mut Errors) {
    let restart = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    if restart != Some("Never") {
        errs.add(path, "only allowed when spec.template.spec.restartPolicy is Never");
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        let at = format!("{path}.rules[{i}]");
        one_of(Some(rule.action.as_str()), &["FailJob", "Ignore", "Count"], &format!("{at}.action"), errs);
        match (&rule.on_exit_codes, rule.on_pod_conditions.as_deref().filter(|c| !c.is_empty())) {
            (Some(_), Some(_)) => errs.add(at.clone(), "onExitCodes and onPodConditions are mutually exclusive"),
            (None, None) => errs.add(at.clone(), "one of onExitCodes and onPodConditions is required"),
            (Some(codes), None) => {
                let at = format!("{at}.onExitCodes");
                one_of(Some(codes.operator.as_str()), &["In", "NotIn"], &format!("{at}.operator"), errs);
                if codes.values.is_empty() {
                    errs.add(format!("{at}.values"), "at least one exit code is required");
                }
                if codes.operator == "In" && codes.values.contains(&0) {
                    errs.add(format!("{at}.values"), "0 is not allowed with the In operator");
                }
                let mut sorted = codes.values.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != codes.values.len() {
                    errs.add(format!("{at}.values"), "exit codes must be unique");
                }
            }
            (None, Some(conditions)) => {
                for (j, c) in conditions.iter().enumerate() {
                    let status = c.status.as_deref();
                    one_of(status, &["True", "False", "Unknown"], &format!("{at}.onPodConditions[{j}].status"), errs);
                }
            }
        }
    }
}

/// A CronJob's spec beyond its Job template: the schedule and time zone
/// must be readable, the policies known.
pub(crate) fn cron_job_spec(spec: &batch::CronJobSpec, errs: &mut Errors) {
    if let Err(why) = crate::cron::Schedule::parse(&spec.schedule) {
        errs.add("spec.schedule", why);
    }
    if let Err(why) = crate::cron::time_zone(spec.time_zone.as_deref()) {
        errs.add("spec.timeZone", why);
    }
    one_of(spec.concurrency_policy.as_deref(), &["Allow", "Forbid", "Replace"], "spec.concurrencyPolicy", errs);
    if let Some(d) = spec.starting_deadline_seconds.filter(|d| *d < 0) {
        errs.add("spec.startingDeadlineSeconds", format!("{d} must be greater than or equal to 0"));
    }
    non_negative(spec.successful_jobs_history_limit, "spec.successfulJobsHistoryLimit", errs);
    non_negative(spec.failed_jobs_history_limit, "spec.failedJobsHistoryLimit", errs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label_problem("web-1").is_none());
        assert!(dns_label_problem("Web").is_some());
        assert!(dns_label_problem("-web").is_some());
        assert!(dns_label_problem(&"a".repeat(64)).is_some());
        assert!(dns_subdomain_problem("a.b-c.d").is_none());
        assert!(dns_subdomain_problem("a..b").is_some());
        assert!(dns_subdomain_problem("under_score").is_some());
    }

    #[test]
    fn label_syntax() {
        assert!(label_key_problem("app").is_none());
        assert!(label_key_problem("app.kubernetes.io/name").is_none());
        assert!(label_key_problem("bad key").is_some());
        assert!(label_key_problem("UPPER.io/x").is_some());
        assert!(label_value_problem("").is_none());
        assert!(label_value_problem("v1.2_3-a").is_none());
        assert!(label_value_problem("-x").is_some());
        assert!(label_value_problem(&"x".repeat(64)).is_some());
    }
}
