//! Naming kinds and objects the way kubectl prints them.

use anyhow::{anyhow, Result};
use skiff_api::KindInfo;

/// The kind a command-line name (`po`, `deploy`, `services`) stands for.
pub fn lookup(name: &str) -> Result<&'static KindInfo> {
    KindInfo::lookup(name).ok_or_else(|| anyhow!("the server doesn't have a resource type {name:?}"))
}

/// `deployment.apps` or `pod`: the kind kubectl names in its messages.
pub fn kind_ref(info: &KindInfo) -> String {
    let kind = info.kind.to_ascii_lowercase();
    match info.group() {
        "" => kind,
        group => format!("{kind}.{group}"),
    }
}

/// `deployment.apps/web`, as printed by `apply` and `get -o name`.
pub fn object_ref(info: &KindInfo, name: &str) -> String {
    format!("{}/{name}", kind_ref(info))
}

/// `deployment.apps "web"`, as printed by `delete`.
pub fn quoted_ref(info: &KindInfo, name: &str) -> String {
    format!("{} {name:?}", kind_ref(info))
}

/// The object a command names, as `KIND/NAME` (one word) or `KIND NAME`
/// (two), as kubectl accepts both.
pub fn parse_target(words: &[String]) -> Result<(&'static KindInfo, String)> {
    let (kind, name) = match words {
        [one] => {
            one.split_once('/').ok_or_else(|| anyhow!("name the object as KIND/NAME or KIND NAME, not {one:?}"))?
        }
        [kind, name] if !name.contains('/') => (kind.as_str(), name.as_str()),
        _ => return Err(anyhow!("name one object, as KIND/NAME or KIND NAME")),
    };
    if name.is_empty() {
        return Err(anyhow!("the object in {kind:?} has no name"));
    }
    Ok((lookup(kind)?, name.to_string()))
}

/// The namespace a request for this kind goes to: none for cluster-scoped kinds.
pub fn scope<'a>(info: &KindInfo, namespace: &'a str) -> &'a str {
    if info.namespaced {
        namespace
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_kind_dot_group_slash_name() {
        assert_eq!(object_ref(lookup("deploy").unwrap(), "web"), "deployment.apps/web");
        assert_eq!(object_ref(lookup("po").unwrap(), "web-1"), "pod/web-1");
        assert_eq!(object_ref(lookup("ns").unwrap(), "demo"), "namespace/demo");
        assert_eq!(object_ref(lookup("ing").unwrap(), "x"), "ingress.networking.k8s.io/x");
        assert_eq!(object_ref(lookup("hpa").unwrap(), "h"), "horizontalpodautoscaler.autoscaling/h");
        assert_eq!(quoted_ref(lookup("deployments").unwrap(), "web"), "deployment.apps \"web\"");
        assert_eq!(quoted_ref(lookup("cm").unwrap(), "cfg"), "configmap \"cfg\"");
    }

    #[test]
    fn targets_are_kind_slash_name_or_two_words() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (info, name) = parse_target(&words(&["deploy/web"])).unwrap();
        assert_eq!((info.kind, name.as_str()), ("Deployment", "web"));
        let (info, name) = parse_target(&words(&["deployment", "api"])).unwrap();
        assert_eq!((info.kind, name.as_str()), ("Deployment", "api"));
        assert!(parse_target(&words(&["web"])).is_err());
        assert!(parse_target(&words(&["deploy/"])).is_err());
        assert!(parse_target(&words(&["deploy/a", "b"])).is_err());
        assert!(parse_target(&words(&[])).is_err());
        assert!(parse_target(&words(&["widgets/x"])).unwrap_err().to_string().contains("widgets"));
    }

    #[test]
    fn unknown_kinds_are_named() {
        assert_eq!(lookup("widgets").unwrap_err().to_string(), "the server doesn't have a resource type \"widgets\"");
    }

    #[test]
    fn cluster_scoped_kinds_have_no_namespace() {
        assert_eq!(scope(lookup("no").unwrap(), "default"), "");
        assert_eq!(scope(lookup("svc").unwrap(), "demo"), "demo");
    }
}
