//! Discovery: which groups, versions and resources the REST front serves,
//! with their verbs, short names and categories, in both of Kubernetes'
//! forms — the legacy documents (`/api`, `/apis`, `/apis/G/V`) and
//! aggregated discovery (`apidiscovery.k8s.io/v2`, one document for all),
//! which kubectl 1.32 asks for first. Both are read off `skiff_api::KINDS`.

use serde_json::{json, Value};
use skiff_api::{KindInfo, KINDS};

use super::metrics;

/// The Kubernetes release whose API the REST front speaks.
pub const KUBERNETES_MINOR: &str = "32";

/// Content type of an aggregated discovery answer.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io") && params.contains(&"v=v2")
    })
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-skiff.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Verbs every served kind has.
const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// Kinds `kubectl get all` lists.
fn categories(info: &KindInfo) -> &'static [&'static str] {
    match info.kind {
        "Pod"
        | "Service"
        | "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "CronJob"
        | "HorizontalPodAutoscaler" => &["all"],
        _ => &[],
    }
}

/// What may be done through a proxy subresource.
const PROXY_VERBS: &[&str] = &["create", "delete", "get", "patch", "update"];

/// A subresource: its name, the group/version/kind it answers with, and its verbs.
struct Subresource {
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
}

fn subresources(info: &'static KindInfo) -> Vec<Subresource> {
    let (group, version) = split(info.api_version);
    let own = |name, verbs| Subresource { name, group, version, kind: info.kind, verbs };
    let mut subs = Vec::new();
    if info.has_status {
        subs.push(own("status", &["get", "patch", "update"]));
    }
    match info.kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" => subs.push(Subresource {
            name: "scale",
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: &["get", "patch", "update"],
        }),
        "Pod" => {
            subs.push(Subresource { name: "binding", group: "", version: "v1", kind: "Binding", verbs: &["create"] });
            subs.push(Subresource {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: &["create"],
            });
            subs.push(own("log", &["get"]));
            subs.push(Subresource {
                name: "proxy",
                group: "",
                version: "v1",
                kind: "PodProxyOptions",
                verbs: PROXY_VERBS,
            });
            subs.push(Subresource {
                name: "exec",
                group: "",
                version: "v1",
                kind: "PodExecOptions",
                verbs: &["create", "get"],
            });
        }
        "ServiceAccount" => subs.push(Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: &["create"],
        }),
        "Namespace" => subs.push(own("finalize", &["update"])),
        "Service" => subs.push(Subresource {
            name: "proxy",
            group: "",
            version: "v1",
            kind: "ServiceProxyOptions",
            verbs: PROXY_VERBS,
        }),
        _ => {}
    }
    subs
}

/// (group, version) of an apiVersion.
fn split(api_version: &'static str) -> (&'static str, &'static str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// The group/versions served: the kinds', then the access reviews'.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut served = skiff_api::kinds::group_versions();
    served.push(("authorization.k8s.io", "v1"));
    served
}

/// Reviews are asked, never stored: create is their only verb.
const REVIEWS: &[(&str, &str, bool)] = &[
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
    ("subjectaccessreviews", "SubjectAccessReview", false),
];

/// `/api`.
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

/// The stored kinds' group versions, and metrics.k8s.io's.
fn served_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut all = group_versions();
    all.push((metrics::GROUP, metrics::VERSION));
    all
}

fn group_doc(group: &str) -> Option<Value> {
    let versions: Vec<Value> = served_group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
}

/// `/apis`.
pub fn groups() -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (group, _) in served_group_versions() {
        if !group.is_empty() && !names.contains(&group) {
            names.push(group);
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": names.into_iter().filter_map(group_doc).collect::<Vec<_>>()})
}

/// `/apis/GROUP`.
pub fn group(group: &str) -> Option<Value> {
    let mut doc = group_doc(group)?;
    doc["kind"] = "APIGroup".into();
    doc["apiVersion"] = "v1".into();
    Some(doc)
}

fn kinds_in<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static KindInfo> + 'a {
    KINDS.iter().filter(move |k| split(k.api_version) == (group, version))
}

/// `/api/v1`, `/apis/GROUP/VERSION`.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (metrics::GROUP, metrics::VERSION) {
        return Some(metrics::resources());
    }
    if !group_versions().contains(&(group, version)) {
        return None;
    }
    let mut resources = Vec::new();
    for info in kinds_in(group, version) {
        resources.push(json!({
            "name": info.plural,
            "singularName": info.kind.to_ascii_lowercase(),
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": VERBS,
            "shortNames": info.short_names,
            "categories": categories(info),
        }));
        for sub in subresources(info) {
            let mut doc = json!({
                "name": format!("{}/{}", info.plural, sub.name),
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": sub.kind,
                "verbs": sub.verbs,
            });
            if (sub.group, sub.version) != (group, version) {
                doc["group"] = sub.group.into();
                doc["version"] = sub.version.into();
            }
            resources.push(doc);
        }
    }
    if group == "authorization.k8s.io" {
        for (plural, kind, namespaced) in REVIEWS {
            resources.push(json!({
                "name": plural, "singularName": kind.to_ascii_lowercase(), "namespaced": namespaced,
                "kind": kind, "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// Aggregated discovery of the core group (`/api`) or of all others (`/apis`).
pub fn aggregated(core: bool) -> Value {
    let mut items: Vec<Value> = Vec::new();
    for (group, version) in group_versions().into_iter().filter(|(g, _)| g.is_empty() == core) {
        let mut resources: Vec<Value> =
            kinds_in(group, version).map(|info| aggregated_resource(info, group, version)).collect();
        if group == "authorization.k8s.io" {
            for (plural, kind, _) in REVIEWS {
                resources.push(json!({
                    "resource": plural,
                    "responseKind": {"group": group, "version": version, "kind": kind},
                    "scope": "Cluster",
                    "singularResource": kind.to_ascii_lowercase(),
                    "verbs": ["create"],
                }));
            }
        }
        let entry = json!({"version": version, "resources": resources, "freshness": "Current"});
        match items.iter_mut().find(|i| i["metadata"]["name"] == group) {
            Some(item) => item["versions"].as_array_mut().expect("versions is a list").push(entry),
            None => items.push(json!({"metadata": {"name": group}, "versions": [entry]})),
        }
    }
    if !core {
        let resource = |plural: &str, kind: &str, scope: &str| {
            json!({"resource": plural, "responseKind": {"group": metrics::GROUP, "version": metrics::VERSION, "kind": kind},
                "scope": scope, "singularResource": "", "verbs": ["get", "list"]})
        };
        let resources = [resource("nodes", "NodeMetrics", "Cluster"), resource("pods", "PodMetrics", "Namespaced")];
        items.push(json!({"metadata": {"name": metrics::GROUP},
            "versions": [{"version": metrics::VERSION, "resources": resources, "freshness": "Current"}]}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn aggregated_resource(info: &'static KindInfo, group: &str, version: &str) -> Value {
    let subresources: Vec<Value> = subresources(info)
        .into_iter()
        .map(|s| {
            json!({
                "subresource": s.name,
                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                "verbs": s.verbs,
            })
        })
        .collect();
    json!({
        "resource": info.plural,
        "responseKind": {"group": group, "version": version, "kind": info.kind},
        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": info.kind.to_ascii_lowercase(),
        "verbs": VERBS,
        "shortNames": info.short_names,
        "categories": categories(info),
        "subresources": subresources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_discoverable_in_both_forms() {
        for info in KINDS {
            let (group, version) = split(info.api_version);
            let list = resources(group, version).unwrap();
            assert!(list["resources"].as_array().unwrap().iter().any(|r| r["kind"] == info.kind), "{}", info.kind);
            let aggregated = aggregated(group.is_empty());
            let found = aggregated["items"].as_array().unwrap().iter().any(|i| {
                i["metadata"]["name"] == group
                    && i["versions"][0]["resources"].as_array().unwrap().iter().any(|r| r["resource"] == info.plural)
            });
            assert!(found, "{} missing from aggregated discovery", info.kind);
        }
        assert!(resources("apps", "v2").is_none());
        assert!(group("nothing.example.com").is_none());
    }

    #[test]
    fn deployments_have_scale_and_the_all_category() {
        let apps = resources("apps", "v1").unwrap();
        let scale = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!((scale["group"].as_str(), scale["kind"].as_str()), (Some("autoscaling"), Some("Scale")));
        let deployments = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments").unwrap();
        assert_eq!(deployments["categories"], json!(["all"]));
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
    }
}
