//! From a Pod spec to CRI configs: the sandbox, each container (command,
//! env, mounts, resources, security context, log path) and the image pull
//! credentials.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::Value;

use super::dns::{dns_config, NodeDns};
use super::Objects;
use crate::runtime::{labels, proto};
use crate::volumes::Prepared;

/// CPU period for quotas: Kubernetes' 100ms.
const CPU_PERIOD: i64 = 100_000;

/// Why a container's config could not be built (CreateContainerConfigError).
pub type ConfigError = String;

/// The uid, namespace and name of a pod.
pub fn ids(pod: &Pod) -> (&str, &str, &str) {
    let m = &pod.metadata;
    (
        m.uid.as_deref().unwrap_or_default(),
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// The folder of the pod's logs: `<pod-log-dir>/<ns>_<name>_<uid>`.
pub fn log_dir(pod_log_dir: &Path, pod: &Pod) -> std::path::PathBuf {
    let (uid, ns, name) = ids(pod);
    pod_log_dir.join(format!("{ns}_{name}_{uid}"))
}

/// The pod's hostname: spec.hostname, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let (_, _, name) = ids(pod);
    let h = pod.spec.as_ref().and_then(|s| s.hostname.clone()).unwrap_or_else(|| name.to_string());
    h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string()
}

pub fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false)
}

/// The labels that tie a sandbox or container to its pod.
fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let (uid, ns, name) = ids(pod);
    HashMap::from([
        (labels::POD_UID.to_string(), uid.to_string()),
        (labels::POD_NAME.to_string(), name.to_string()),
        (labels::POD_NAMESPACE.to_string(), ns.to_string()),
    ])
}

pub fn sandbox_config(pod: &Pod, pod_log_dir: &Path, dns: &NodeDns, attempt: u32) -> proto::PodSandboxConfig {
    let (uid, ns, name) = ids(pod);
    let mut sandbox_labels = pod_labels(pod);
    for (k, v) in pod.metadata.labels.iter().flatten() {
        sandbox_labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let spec = pod.spec.as_ref();
    let port_mappings = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| proto::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => proto::Protocol::Udp as i32,
                Some("SCTP") => proto::Protocol::Sctp as i32,
                _ => proto::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let network = if host_network(pod) { proto::NamespaceMode::Node } else { proto::NamespaceMode::Pod };
    proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata { name: name.into(), uid: uid.into(), namespace: ns.into(), attempt }),
        hostname: hostname(pod),
        log_directory: log_dir(pod_log_dir, pod).display().to_string(),
        dns_config: Some(dns_config(pod, dns)),
        port_mappings,
        labels: sandbox_labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect(),
        linux: Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(proto::NamespaceOption { network: network as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// Everything a container's config needs besides its spec.
pub struct ContainerContext<'a> {
    pub pod: &'a Pod,
    pub objects: &'a dyn Objects,
    pub volumes: &'a Prepared,
    pub hosts_file: Option<&'a Path>,
    pub pod_ip: &'a str,
    pub node_name: &'a str,
    pub node_ip: &'a str,
}

pub fn container_config(
    ctx: &ContainerContext<'_>,
    c: &Container,
    image: &str,
    attempt: u32,
) -> Result<proto::ContainerConfig, ConfigError> {
    let mut container_labels = pod_labels(ctx.pod);
    container_labels.insert(labels::CONTAINER_NAME.into(), c.name.clone());
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(host) = ctx.volumes.paths.get(&m.name) else {
            return Err(format!("volumeMount {:?} names no volume of the pod", m.name));
        };
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|p| p == "..") => {
                return Err(format!("subPath {sub:?} may not contain .."))
            }
            Some(sub) => host.join(sub),
            None => host.clone(),
        };
        mounts.push(proto::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    if let Some(dir) = &ctx.volumes.service_account {
        let path = crate::serviceaccount::MOUNT_PATH;
        if !mounts.iter().any(|m| m.container_path == path) {
            mounts.push(proto::Mount {
                container_path: path.into(),
                host_path: dir.display().to_string(),
                readonly: true,
                ..Default::default()
            });
        }
    }
    if let Some(hosts) = ctx.hosts_file {
        if !mounts.iter().any(|m| m.container_path == "/etc/hosts") {
            mounts.push(proto::Mount {
                container_path: "/etc/hosts".into(),
                host_path: hosts.display().to_string(),
                ..Default::default()
            });
        }
    }
    let sc = c.security_context.as_ref();
    let pod_sc = ctx.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let run_as_user = sc.and_then(|s| s.run_as_user).or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc.and_then(|s| s.run_as_group).or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let envs = env(ctx, c)?;
    let with_env = |words: &Option<Vec<String>>| -> Vec<String> {
        words.iter().flatten().map(|w| expand(w, |name| lookup(&envs, name))).collect()
    };
    Ok(proto::ContainerConfig {
        metadata: Some(proto::ContainerMetadata { name: c.name.clone(), attempt }),
        image: Some(proto::ImageSpec { image: image.into(), ..Default::default() }),
        command: with_env(&c.command),
        args: with_env(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: envs.into_iter().map(|(key, value)| proto::KeyValue { key, value }).collect(),
        mounts,
        labels: container_labels,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(proto::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(proto::LinuxContainerSecurityContext {
                privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
                run_as_user: run_as_user.map(|value| proto::Int64Value { value }),
                run_as_group: run_as_group.map(|value| proto::Int64Value { value }),
                readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
                no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// Limits become a CFS quota and a memory limit; the CPU request becomes
/// shares (1 CPU = 1024), as Kubernetes maps them.
pub fn resources(c: &Container) -> proto::LinuxContainerResources {
    let res = c.resources.as_ref();
    let milli =
        |map: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         key: &str| { map.and_then(|m| m.get(key)).and_then(|q| skiff_api::quantity::parse_milli(&q.0).ok()) };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    let mut out = proto::LinuxContainerResources::default();
    if let Some(cpu) = milli(limits, "cpu").filter(|m| *m > 0) {
        out.cpu_period = CPU_PERIOD;
        // The kernel refuses quotas under 1ms.
        out.cpu_quota = i64::try_from(cpu * i128::from(CPU_PERIOD) / 1000).unwrap_or(i64::MAX).max(1000);
    }
    if let Some(mem) = milli(limits, "memory").filter(|m| *m > 0) {
        out.memory_limit_in_bytes = i64::try_from(mem / 1000).unwrap_or(i64::MAX);
    }
    let cpu_request = milli(requests, "cpu").or_else(|| milli(limits, "cpu"));
    out.cpu_shares = cpu_request.map_or(2, |m| i64::try_from(m * 1024 / 1000).unwrap_or(i64::MAX).max(2));
    out
}

/// The container's environment: env (values, and valueFrom ConfigMap and
/// Secret keys and pod fields) after envFrom, as Kubernetes orders them.
/// A value's `$(VAR)` names a variable defined before it.
fn env(ctx: &ContainerContext<'_>, c: &Container) -> Result<Vec<(String, String)>, ConfigError> {
    let (_, ns, _) = ids(ctx.pod);
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |k: String, v: String, out: &mut Vec<(String, String)>| {
        out.retain(|(key, _)| key != &k);
        out.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match ctx.objects.config_map(ns, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(format!("{prefix}{k}"), v.clone(), &mut out);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match ctx.objects.secret(ns, &r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned(), &mut out);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or_default(), |name| lookup(&out, name))),
            Some(_) => env_value(ctx, ns, e)?,
        };
        if let Some(v) = value {
            set(e.name.clone(), v, &mut out);
        }
    }
    Ok(out)
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A `valueFrom` env var's value; None when an optional source is missing.
fn env_value(ctx: &ContainerContext<'_>, ns: &str, e: &EnvVar) -> Result<Option<String>, ConfigError> {
    let Some(from) = &e.value_from else { return Ok(e.value.clone()) };
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        return match ctx.objects.config_map(ns, &r.name) {
            Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(format!("couldn't find key {} in ConfigMap {ns}/{}", r.key, r.name)),
            },
            None if optional => Ok(None),
            None => Err(format!("configmap {:?} not found", r.name)),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        return match ctx.objects.secret(ns, &r.name) {
            Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if optional => Ok(None),
                None => Err(format!("couldn't find key {} in Secret {ns}/{}", r.key, r.name)),
            },
            None if optional => Ok(None),
            None => Err(format!("secret {:?} not found", r.name)),
        };
    }
    if let Some(f) = &from.field_ref {
        let pod = ctx.pod;
        let spec = pod.spec.as_ref();
        let value = match f.field_path.as_str() {
            "status.podIP" => ctx.pod_ip.to_string(),
            "status.hostIP" => ctx.node_ip.to_string(),
            "spec.nodeName" => ctx.node_name.to_string(),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
            path => crate::volumes::downward_field(pod, path)
                .ok_or_else(|| format!("env {}: fieldRef {path:?} is not supported", e.name))?,
        };
        return Ok(Some(value));
    }
    Err(format!("env {}: this kind of valueFrom is not supported", e.name))
}

/// Kubernetes' variable expansion in env values, command and args:
/// `$(VAR)` becomes VAR's value when `lookup` knows it and stays as written
/// when not; `$$` is an escaped `$` (so `$$(VAR)` stays `$(VAR)`).
fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|r| r.split_once(')')) {
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Registry credentials for `image` from the pod's imagePullSecrets
/// (`kubernetes.io/dockerconfigjson` Secrets): the first whose `auths`
/// names the image's registry.
pub fn pull_auth(pod: &Pod, objects: &dyn Objects, image: &str) -> Option<proto::AuthConfig> {
    let (_, ns, _) = ids(pod);
    let registry = registry_of(image);
    let secrets = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_deref()).unwrap_or_default();
    secrets.iter().find_map(|r| {
        let secret = objects.secret(ns, &r.name)?;
        let data = secret.data.as_ref()?;
        let raw = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg"))?;
        let json: Value = serde_json::from_slice(&raw.0).ok()?;
        let auths = json.get("auths").unwrap_or(&json).as_object()?;
        auths.iter().find_map(|(server, auth)| {
            let host = server.trim_start_matches("https://").trim_start_matches("http://");
            let host = host.split('/').next().unwrap_or(host);
            (host == registry).then(|| proto::AuthConfig {
                username: auth["username"].as_str().unwrap_or_default().into(),
                password: auth["password"].as_str().unwrap_or_default().into(),
                auth: auth["auth"].as_str().unwrap_or_default().into(),
                // containerd matches this to the image's registry by the
                // host of a URL: a bare `host:port` does not parse as one
                // (the pull fails), a bare name parses as a path (the
                // credentials are silently dropped).
                server_address: format!("https://{host}"),
                ..Default::default()
            })
        })
    })
}

/// The registry host of an image reference (`docker.io` when it names none).
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::tests::MapObjects;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "n1",
                "imagePullSecrets": [{"name": "regcred"}],
                "containers": [{
                    "name": "c", "image": "127.0.0.1:5000/app:1",
                    "command": ["/app"], "args": ["--x"], "workingDir": "/w",
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "env": [
                        {"name": "PLAIN", "value": "v"},
                        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                    ],
                    "resources": {"limits": {"cpu": "500m", "memory": "32Mi"}, "requests": {"cpu": "250m"}},
                    "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}
                }]
            }
        }))
        .unwrap()
    }

    /// The first container's config, on node n1 with pod IP 10.0.0.9, with
    /// ConfigMap ns/cm holding `cm` and Secret ns/s holding `pw`.
    fn first_container_config(p: &Pod, cm: &[(&str, &str)]) -> Result<proto::ContainerConfig, ConfigError> {
        let objects = MapObjects::default();
        objects.put_config_map("ns", "cm", cm);
        objects.put_secret("ns", "s", &[("pw", "hunter2")]);
        let volumes = Prepared::default();
        let ctx = ContainerContext {
            pod: p,
            objects: &objects,
            volumes: &volumes,
            hosts_file: None,
            pod_ip: "10.0.0.9",
            node_name: "n1",
            node_ip: "192.168.0.2",
        };
        container_config(&ctx, &p.spec.as_ref().unwrap().containers[0], "sha256:abc", 0)
    }

    #[test]
    fn container_config_carries_the_spec() {
        let p = pod();
        let objects = MapObjects::default();
        objects.put_config_map("ns", "cm", &[("k", "from-cm")]);
        objects.put_secret("ns", "s", &[("pw", "hunter2")]);
        let volumes = Prepared::default();
        let ctx = ContainerContext {
            pod: &p,
            objects: &objects,
            volumes: &volumes,
            hosts_file: Some(Path::new("/x/etc-hosts")),
            pod_ip: "10.0.0.9",
            node_name: "n1",
            node_ip: "192.168.0.2",
        };
        let c = &p.spec.as_ref().unwrap().containers[0];
        let config = container_config(&ctx, c, "sha256:abc", 2).unwrap();
        assert_eq!(config.command, ["/app"]);
        assert_eq!(config.args, ["--x"]);
        assert_eq!(config.working_dir, "/w");
        assert_eq!(config.log_path, "c/2.log");
        assert_eq!(config.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(config.labels[labels::POD_UID], "u1");
        assert_eq!(config.labels[labels::CONTAINER_NAME], "c");
        let env: HashMap<_, _> = config.envs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
        assert_eq!(env["PLAIN"], "v");
        assert_eq!(env["FROM_CM"], "from-cm");
        assert_eq!(env["FROM_SECRET"], "hunter2");
        assert_eq!(env["POD_NAME"], "web");
        assert_eq!(env["POD_IP"], "10.0.0.9");
        assert_eq!(env["NODE"], "n1");
        let linux = config.linux.unwrap();
        let r = linux.resources.unwrap();
        assert_eq!((r.cpu_period, r.cpu_quota, r.cpu_shares), (100_000, 50_000, 256));
        assert_eq!(r.memory_limit_in_bytes, 32 * 1024 * 1024);
        let sc = linux.security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert!(sc.readonly_rootfs && !sc.privileged);
        assert_eq!(config.mounts[0].container_path, "/etc/hosts");
    }

    #[test]
    fn variables_expand_as_kubernetes_expands_them() {
        let env = [("POD_NAME".to_string(), "web-0".to_string()), ("NS".to_string(), "demo".to_string())];
        let x = |s: &str| expand(s, |n| lookup(&env, n));
        assert_eq!(x("--id=$(POD_NAME).$(NS)"), "--id=web-0.demo");
        assert_eq!(x("$(UNKNOWN) stays"), "$(UNKNOWN) stays");
        assert_eq!(x("$$(POD_NAME) is escaped, $$ is $"), "$(POD_NAME) is escaped, $ is $");
        assert_eq!(x("cost: $5 and $(unclosed"), "cost: $5 and $(unclosed");
        assert_eq!(x("trailing $"), "trailing $");
    }

    #[test]
    fn args_and_later_env_values_see_earlier_variables() {
        let mut p = pod();
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.args = Some(vec!["--identity=$(POD_NAME)".into(), "--url=$(URL)".into()]);
        c.env
            .get_or_insert_with(Vec::new)
            .push(serde_json::from_value(json!({"name": "URL", "value": "http://$(POD_IP):80"})).unwrap());
        let config = first_container_config(&p, &[("k", "from-cm")]).unwrap();
        assert_eq!(config.args, ["--identity=web", "--url=http://10.0.0.9:80"]);
    }

    #[test]
    fn a_missing_config_map_key_is_a_config_error() {
        let err = first_container_config(&pod(), &[("other", "x")]).unwrap_err();
        assert_eq!(err, "couldn't find key k in ConfigMap ns/cm");
    }

    #[test]
    fn sandbox_config_names_the_pod_and_maps_host_ports() {
        let p = pod();
        let config = sandbox_config(&p, Path::new("/var/log/pods"), &NodeDns::default(), 1);
        assert_eq!(config.hostname, "web");
        assert_eq!(config.log_directory, "/var/log/pods/ns_web_u1");
        assert_eq!(config.metadata.as_ref().unwrap().attempt, 1);
        assert_eq!(config.labels[labels::POD_NAMESPACE], "ns");
        assert_eq!(config.labels["app"], "web");
        assert_eq!(config.port_mappings[0].host_port, 8080);
    }

    #[test]
    fn pull_secrets_match_the_registry() {
        let p = pod();
        let objects = MapObjects::default();
        let config = json!({"auths": {"127.0.0.1:5000": {"username": "u", "password": "p", "auth": "dTpw"}}});
        objects.put_secret("ns", "regcred", &[(".dockerconfigjson", &config.to_string())]);
        let auth = pull_auth(&p, &objects, "127.0.0.1:5000/app:1").unwrap();
        assert_eq!((auth.username.as_str(), auth.password.as_str(), auth.auth.as_str()), ("u", "p", "dTpw"));
        assert!(pull_auth(&p, &objects, "busybox").is_none(), "docker.io has no entry");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
    }
}
