//! The kinds skiff serves, with the names Kubernetes gives them: plural
//! resource (the etcd key segment), short names for the CLI, and scope.

/// What the apiserver and clients need to know about one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    /// `group/version`, or `version` for the core group.
    pub api_version: &'static str,
    /// Lower-case plural: the resource name and the etcd key segment.
    pub plural: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Status is written through UpdateStatus only; Update keeps it.
    pub has_status: bool,
}

const fn kind(
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
) -> KindInfo {
    KindInfo { kind, api_version, plural, namespaced, short_names, has_status }
}

pub static KINDS: &[KindInfo] = &[
    kind("Namespace", "v1", "namespaces", false, &["ns"], true),
    kind("Node", "v1", "nodes", false, &["no"], true),
    kind("Pod", "v1", "pods", true, &["po"], true),
    kind("Service", "v1", "services", true, &["svc"], true),
    kind("Endpoints", "v1", "endpoints", true, &["ep"], false),
    kind("ConfigMap", "v1", "configmaps", true, &["cm"], false),
    kind("Secret", "v1", "secrets", true, &[], false),
    kind("ResourceQuota", "v1", "resourcequotas", true, &["quota"], true),
    kind("LimitRange", "v1", "limitranges", true, &["limits"], false),
    kind("ServiceAccount", "v1", "serviceaccounts", true, &["sa"], false),
    kind("Event", "v1", "events", true, &["ev"], false),
    kind("PersistentVolume", "v1", "persistentvolumes", false, &["pv"], true),
    kind("PersistentVolumeClaim", "v1", "persistentvolumeclaims", true, &["pvc"], true),
    kind("StorageClass", "storage.k8s.io/v1", "storageclasses", false, &["sc"], false),
    kind("Deployment", "apps/v1", "deployments", true, &["deploy"], true),
    kind("ReplicaSet", "apps/v1", "replicasets", true, &["rs"], true),
    kind("DaemonSet", "apps/v1", "daemonsets", true, &["ds"], true),
    kind("StatefulSet", "apps/v1", "statefulsets", true, &["sts"], true),
    kind("Job", "batch/v1", "jobs", true, &[], true),
    kind("CronJob", "batch/v1", "cronjobs", true, &["cj"], true),
    kind("Ingress", "networking.k8s.io/v1", "ingresses", true, &["ing"], true),
    kind("IngressClass", "networking.k8s.io/v1", "ingressclasses", false, &[], false),
    kind("Lease", "coordination.k8s.io/v1", "leases", true, &[], false),
    kind("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers", true, &["hpa"], true),
    kind("Role", "rbac.authorization.k8s.io/v1", "roles", true, &[], false),
    kind("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterroles", false, &[], false),
    kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings", true, &[], false),
    kind("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings", false, &[], false),
    kind("CertificateSigningRequest", "certificates.k8s.io/v1", "certificatesigningrequests", false, &["csr"], true),
];

/// The group/versions the kinds are served under, in the order first
/// seen (the core group's `v1` first), as (group, version).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for info in KINDS {
        let gv = info.group_version();
        if !seen.contains(&gv) {
            seen.push(gv);
        }
    }
    seen
}

impl KindInfo {
    /// (group, version): `("apps", "v1")`, `("", "v1")` for the core group.
    pub fn group_version(&self) -> (&'static str, &'static str) {
        self.api_version.rsplit_once('/').unwrap_or(("", self.api_version))
    }

    /// Finds a kind by its name, plural, singular or short name, in any case
    /// (`Deployment`, `deployments`, `deployment`, `deploy`).
    pub fn lookup(name: &str) -> Option<&'static KindInfo> {
        let lower = name.to_ascii_lowercase();
        KINDS.iter().find(|k| {
            k.kind.eq_ignore_ascii_case(&lower) || k.plural == lower || k.short_names.contains(&lower.as_str())
        })
    }

    /// Finds a kind by its exact `kind` name, as carried in requests and objects.
    pub fn by_kind(kind: &str) -> Result<&'static KindInfo, crate::Error> {
        KINDS.iter().find(|k| k.kind == kind).ok_or_else(|| crate::Error::UnknownKind(kind.to_string()))
    }

    /// The etcd key prefix that holds every object of this kind, or those of
    /// one namespace when `namespace` is given.
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|ns| self.namespaced && !ns.is_empty()) {
            Some(ns) => format!("/registry/{}/{}/", self.plural, ns),
            None => format!("/registry/{}/", self.plural),
        }
    }

    /// The etcd key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("/registry/{}/{}/{}", self.plural, namespace, name)
        } else {
            format!("/registry/{}/{}", self.plural, name)
        }
    }

    /// The API group: what comes before the version in `api_version`, `""`
    /// for the core group. Authorization rules name kinds by group and plural.
    pub fn group(&self) -> &'static str {
        self.api_version.rsplit_once('/').map_or("", |(group, _)| group)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_accepts_kubectl_names() {
        assert_eq!(KindInfo::lookup("deploy").unwrap().kind, "Deployment");
        assert_eq!(KindInfo::lookup("Pods").unwrap().kind, "Pod");
        assert_eq!(KindInfo::lookup("ingress").unwrap().kind, "Ingress");
        assert_eq!(KindInfo::lookup("hpa").unwrap().api_version, "autoscaling/v2");
        assert!(KindInfo::lookup("widget").is_none());
        assert_eq!(KindInfo::lookup("clusterrolebinding").unwrap().kind, "ClusterRoleBinding");
        assert_eq!(KindInfo::lookup("roles").unwrap().kind, "Role");
    }

    #[test]
    fn rbac_kinds_are_scoped_as_kubernetes_scopes_them() {
        let scope = |kind: &str| KindInfo::by_kind(kind).unwrap().namespaced;
        assert!(scope("Role") && scope("RoleBinding"));
        assert!(!scope("ClusterRole") && !scope("ClusterRoleBinding"));
        let role = KindInfo::by_kind("ClusterRole").unwrap();
        assert_eq!(role.key("", "system:node"), "/registry/clusterroles/system:node");
        assert_eq!(role.group(), "rbac.authorization.k8s.io");
        assert_eq!(KindInfo::by_kind("Pod").unwrap().group(), "");
    }

    #[test]
    fn keys_follow_kubernetes_layout() {
        let pod = KindInfo::by_kind("Pod").unwrap();
        assert_eq!(pod.key("default", "web"), "/registry/pods/default/web");
        assert_eq!(pod.key_prefix(Some("default")), "/registry/pods/default/");
        assert_eq!(pod.key_prefix(None), "/registry/pods/");
        let node = KindInfo::by_kind("Node").unwrap();
        assert_eq!(node.key("", "n1"), "/registry/nodes/n1");
        assert_eq!(node.key_prefix(Some("default")), "/registry/nodes/");
    }
}
