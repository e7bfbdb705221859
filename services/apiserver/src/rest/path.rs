//! What a REST path names: a discovery document, or a resource (a
//! collection, one object, or one of its subresources) of a served kind.

use skiff_api::{KindInfo, KINDS};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every other group.
    Groups,
    /// `/apis/GROUP`.
    Group(String),
    /// `/api/v1`, `/apis/GROUP/VERSION`: the resources served there.
    Resources {
        group: String,
        version: String,
    },
    OpenApiV2,
    /// `/openapi/v3` (empty) or `/openapi/v3/apis/GROUP/VERSION`.
    OpenApiV3(String),
    /// A resource of a served kind.
    Object(Target),
    /// `/apis/metrics.k8s.io/v1beta1/…`: pods' and nodes' usage.
    Metrics(super::metrics::Metrics),
    /// `/apis/authorization.k8s.io/v1/selfsubjectaccessreviews` and its kin:
    /// reviews that are asked, never stored.
    AccessReview {
        about_self: bool,
    },
    NotFound,
}

/// A resource path: `[namespaces/NS/]PLURAL[/NAME[/SUBRESOURCE]]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub info: &'static KindInfo,
    /// Empty for cluster-scoped kinds and for lists across namespaces.
    pub namespace: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// What follows `proxy/` in a `pods/NAME/proxy/…` or
    /// `services/NAME/proxy/…` path.
    pub tail: String,
}

impl Route {
    pub fn of(path: &str) -> Route {
        let segments: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match segments.as_slice() {
            ["version"] => Route::Version,
            ["healthz" | "readyz" | "livez", ..] => Route::Health,
            ["api"] => Route::CoreVersions,
            ["apis"] => Route::Groups,
            ["openapi", "v2"] => Route::OpenApiV2,
            ["openapi", "v3", rest @ ..] => Route::OpenApiV3(rest.join("/")),
            ["api", "v1"] => Route::Resources { group: String::new(), version: "v1".into() },
            ["apis", group] => Route::Group(group.to_string()),
            ["apis", group, version] => Route::Resources { group: group.to_string(), version: version.to_string() },
            ["apis", "authorization.k8s.io", "v1", review] => match *review {
                "selfsubjectaccessreviews" => Route::AccessReview { about_self: true },
                "subjectaccessreviews" => Route::AccessReview { about_self: false },
                _ => Route::NotFound,
            },
            ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] => {
                super::metrics::Metrics::of(rest).map_or(Route::NotFound, Route::Metrics)
            }
            ["api", "v1", rest @ ..] => target("v1", rest),
            ["apis", group, version, rest @ ..] => target(&format!("{group}/{version}"), rest),
            _ => Route::NotFound,
        }
    }
}

fn target(api_version: &str, rest: &[&str]) -> Route {
    let (namespace, rest) = match rest {
        // `/api/v1/namespaces/NAME[/status|finalize]` is the Namespace itself.
        ["namespaces", _] | ["namespaces", _, "status" | "finalize"] => ("", rest),
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        _ => ("", rest),
    };
    let (plural, name, subresource, tail) = match rest {
        [plural] => (*plural, None, None, String::new()),
        [plural, name] => (*plural, Some(*name), None, String::new()),
        [plural @ ("pods" | "services"), name, "proxy", tail @ ..] => {
            (*plural, Some(*name), Some("proxy"), tail.join("/"))
        }
        [plural, name, sub] => (*plural, Some(*name), Some(*sub), String::new()),
        _ => return Route::NotFound,
    };
    let Some(info) = KINDS.iter().find(|k| k.plural == plural && k.api_version == api_version) else {
        return Route::NotFound;
    };
    if !info.namespaced && !namespace.is_empty() {
        return Route::NotFound;
    }
    Route::Object(Target {
        info,
        namespace: namespace.to_string(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
        tail,
    })
}

/// A path segment with its `%XX` escapes decoded (names such as
/// `system:node` may arrive escaped).
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]
        #[test]
        fn any_path_is_routed_without_panicking(path in "(/[a-z0-9%.:-]{0,12}){0,8}", raw in "\\PC*") {
            let _ = Route::of(&path);
            let _ = Route::of(&raw);
        }
    }

    fn object(path: &str) -> Target {
        match Route::of(path) {
            Route::Object(t) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn resource_paths() {
        let t = object("/api/v1/namespaces/default/pods/web-1/log");
        assert_eq!((t.info.kind, t.namespace.as_str()), ("Pod", "default"));
        assert_eq!((t.name.as_deref(), t.subresource.as_deref()), (Some("web-1"), Some("log")));
        let t = object("/apis/apps/v1/deployments");
        assert_eq!((t.info.kind, t.namespace.as_str(), t.name), ("Deployment", "", None));
        let t = object("/api/v1/namespaces/kube-system");
        assert_eq!((t.info.kind, t.name.as_deref()), ("Namespace", Some("kube-system")));
        let t = object("/api/v1/namespaces/doomed/finalize");
        assert_eq!((t.info.kind, t.subresource.as_deref()), ("Namespace", Some("finalize")));
        let t = object("/api/v1/namespaces/default/services/web:http/proxy/a/b");
        assert_eq!(
            (t.name.as_deref(), t.subresource.as_deref(), t.tail.as_str()),
            (Some("web:http"), Some("proxy"), "a/b")
        );
        let t = object("/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Anode");
        assert_eq!(t.name.as_deref(), Some("system:node"));
    }

    #[test]
    fn unknown_or_misplaced_resources_are_not_found() {
        for path in [
            "/api/v1/deployments",
            "/apis/apps/v1/pods",
            "/api/v1/namespaces/default/nodes",
            "/api/v2/pods",
            "/apis/apps/v1/namespaces/default/deployments/web/scale/extra",
            "/nothing",
        ] {
            assert_eq!(Route::of(path), Route::NotFound, "{path}");
        }
        assert_eq!(Route::of("/apis/apps/v1"), Route::Resources { group: "apps".into(), version: "v1".into() });
        assert_eq!(Route::of("/api"), Route::CoreVersions);
    }
}
