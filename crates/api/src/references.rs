//! The objects a pod names in its own namespace: the ConfigMaps, Secrets
//! and PersistentVolumeClaims of its volumes, its containers' environment
//! and its image pulls. The kubelet watches exactly these for its pods, and
//! the apiserver's Node authorizer lets a kubelet read exactly these, so
//! one node's credentials don't open every Secret of the cluster.

use k8s_openapi::api::core::v1::Pod;

/// A kind of object a pod may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Referenced {
    ConfigMap,
    Secret,
    Claim,
}

impl Referenced {
    /// The kind a resource (plural, core group) is, if a pod can name it.
    pub fn of_resource(plural: &str) -> Option<Self> {
        match plural {
            "configmaps" => Some(Self::ConfigMap),
            "secrets" => Some(Self::Secret),
            "persistentvolumeclaims" => Some(Self::Claim),
            _ => None,
        }
    }
}

/// Every object `pod` names, by kind and name; a name may come more than
/// once.
pub fn references(pod: &Pod) -> Vec<(Referenced, &str)> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    let mut found = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(c) = &volume.config_map {
            found.push((Referenced::ConfigMap, c.name.as_str()));
        }
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            found.push((Referenced::Secret, name));
        }
        if let Some(c) = &volume.persistent_volume_claim {
            found.push((Referenced::Claim, c.claim_name.as_str()));
        }
    }
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for from in container.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &from.config_map_key_ref {
                found.push((Referenced::ConfigMap, r.name.as_str()));
            }
            if let Some(r) = &from.secret_key_ref {
                found.push((Referenced::Secret, r.name.as_str()));
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                found.push((Referenced::ConfigMap, r.name.as_str()));
            }
            if let Some(r) = &from.secret_ref {
                found.push((Referenced::Secret, r.name.as_str()));
            }
        }
    }
    for pull in spec.image_pull_secrets.iter().flatten() {
        found.push((Referenced::Secret, pull.name.as_str()));
    }
    found
}

/// Whether `pod` names the object `name` of kind `kind`.
pub fn uses(pod: &Pod, kind: Referenced, name: &str) -> bool {
    references(pod).into_iter().any(|(k, n)| k == kind && n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_volumes_environment_and_pulls_name() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "volumes": [{"name": "v", "configMap": {"name": "conf"}},
                            {"name": "s", "secret": {"secretName": "certs"}},
                            {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                "imagePullSecrets": [{"name": "regcred"}],
                "initContainers": [{"name": "i", "image": "x", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{"name": "c", "image": "x", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "token", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}
                ]}]
            }
        }))
        .unwrap();
        for (kind, name) in [
            (Referenced::ConfigMap, "conf"),
            (Referenced::ConfigMap, "settings"),
            (Referenced::Secret, "certs"),
            (Referenced::Secret, "regcred"),
            (Referenced::Secret, "token"),
            (Referenced::Secret, "init-env"),
            (Referenced::Claim, "data"),
        ] {
            assert!(uses(&pod, kind, name), "{kind:?} {name}");
        }
        assert!(!uses(&pod, Referenced::Secret, "conf"), "a ConfigMap's name is not a Secret's");
        assert!(!uses(&pod, Referenced::ConfigMap, "other"));
        assert_eq!(references(&pod).len(), 7);
    }
}
