//! The typed pass every object takes before it is stored: decode into the
//! kind's k8s-openapi type (so a wrong type is named by its field path),
//! refuse fields the kind doesn't have, apply defaults, validate, and encode
//! back to JSON.

use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch, certificates::v1 as certificates,
    coordination::v1 as coordination, core::v1 as core, networking::v1 as networking, rbac::v1 as rbac,
    storage::v1 as storage,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::validation::rbac::Scope;
use crate::validation::{self as check, Errors, NameRule};
use crate::{defaults, Error, FieldError, KindInfo, MAX_OBJECT_BYTES};

/// What skiff enforces for one kind beyond its schema.
pub(crate) trait Rules: Serialize + DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta> {
    /// What the object's name must be. Namespaces and Services are DNS names
    /// themselves, so theirs are DNS labels rather than subdomains.
    const NAMES: NameRule = NameRule::Subdomain;
    fn apply_defaults(&mut self) {}
    fn validate(&self, _errs: &mut Errors) {}
}

impl Rules for core::Namespace {
    const NAMES: NameRule = NameRule::Label;
    fn apply_defaults(&mut self) {
        let status = self.status.get_or_insert_with(Default::default);
        status.phase.get_or_insert_with(|| "Active".into());
    }
}

impl Rules for core::Node {}

impl Rules for core::Pod {
    fn apply_defaults(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            defaults::pod_spec(spec);
        }
        let status = self.status.get_or_insert_with(Default::default);
        status.phase.get_or_insert_with(|| "Pending".into());
    }
    fn validate(&self, errs: &mut Errors) {
        match &self.spec {
            Some(spec) => check::pod_spec(spec, "spec", &[], errs),
            None => errs.add("spec", "required"),
        }
    }
}

impl Rules for core::Service {
    const NAMES: NameRule = NameRule::Label;
    fn apply_defaults(&mut self) {
        defaults::service(self.spec.get_or_insert_with(Default::default));
    }
    fn validate(&self, errs: &mut Errors) {
        if let Some(spec) = &self.spec {
            check::service_spec(spec, errs);
        }
    }
}

impl Rules for core::Endpoints {}

impl Rules for core::ConfigMap {
    fn validate(&self, errs: &mut Errors) {
        check::data_keys(self.data.iter().flat_map(|d| d.keys()), "data", errs);
        check::data_keys(self.binary_data.iter().flat_map(|d| d.keys()), "binaryData", errs);
    }
}

impl Rules for core::Secret {
    /// `stringData` is write-only, as in Kubernetes: merged into `data`
    /// (its values win) and never stored.
    fn apply_defaults(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (key, value) in strings {
                data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
            }
        }
    }
    fn validate(&self, errs: &mut Errors) {
        check::data_keys(self.data.iter().flat_map(|d| d.keys()), "data", errs);
        check::data_keys(self.string_data.iter().flat_map(|d| d.keys()), "stringData", errs);
    }
}

impl Rules for core::ResourceQuota {
    fn validate(&self, errs: &mut Errors) {
        let spec = self.spec.as_ref();
        check::quantities(spec.and_then(|s| s.hard.as_ref()), "spec.hard", errs);
    }
}

impl Rules for core::LimitRange {
    fn validate(&self, errs: &mut Errors) {
        for (i, item) in self.spec.as_ref().map(|s| s.limits.as_slice()).unwrap_or_default().iter().enumerate() {
            let at = format!("spec.limits[{i}]");
            if !matches!(item.type_.as_str(), "Container" | "Pod" | "PersistentVolumeClaim") {
                errs.add(
                    format!("{at}.type"),
                    format!("{:?}: must be Container, Pod or PersistentVolumeClaim", item.type_),
                );
            }
            for (field, list) in [
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("max", &item.max),
                ("min", &item.min),
                ("maxLimitRequestRatio", &item.max_limit_request_ratio),
            ] {
                check::quantities(list.as_ref(), &format!("{at}.{field}"), errs);
            }
        }
    }
}

impl Rules for core::ServiceAccount {}
impl Rules for core::Event {}
impl Rules for core::PersistentVolume {
    fn apply_defaults(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            spec.persistent_volume_reclaim_policy.get_or_insert_with(|| "Retain".into());
            spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.add("spec", "required");
        };
        check::access_modes(spec.access_modes.as_deref(), "spec.accessModes", errs);
        match spec.capacity.as_ref().and_then(|c| c.get("storage")) {
            None => errs.add("spec.capacity.storage", "required"),
            Some(_) => check::quantities(spec.capacity.as_ref(), "spec.capacity", errs),
        }
        let reclaim = spec.persistent_volume_reclaim_policy.as_deref();
        check::one_of(reclaim, &["Retain", "Delete", "Recycle"], "spec.persistentVolumeReclaimPolicy", errs);
        if spec.host_path.is_none() && spec.local.is_none() {
            errs.add("spec", "a volume source is required: hostPath or local (the ones skiff's kubelets mount)");
        }
    }
}

impl Rules for core::PersistentVolumeClaim {
    fn apply_defaults(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.add("spec", "required");
        };
        check::access_modes(spec.access_modes.as_deref(), "spec.accessModes", errs);
        let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
        match requests.and_then(|r| r.get("storage")) {
            None => errs.add("spec.resources.requests.storage", "required"),
            Some(_) => check::quantities(requests, "spec.resources.requests", errs),
        }
    }
}

impl Rules for storage::StorageClass {
    fn apply_defaults(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode.get_or_insert_with(|| "Immediate".into());
    }
    fn validate(&self, errs: &mut Errors) {
        if self.provisioner.is_empty() {
            errs.add("provisioner", "required");
        }
        check::one_of(self.reclaim_policy.as_deref(), &["Delete", "Retain"], "reclaimPolicy", errs);
        let mode = self.volume_binding_mode.as_deref();
        check::one_of(mode, &["Immediate", "WaitForFirstConsumer"], "volumeBindingMode", errs);
    }
}

impl Rules for apps::Deployment {
    fn apply_defaults(&mut self) {
        defaults::deployment(&mut self.spec);
    }
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        check::non_negative(spec.replicas, "spec.replicas", errs);
        check::workload_selector(&spec.selector, &spec.template, "spec", errs);
        check::deployment_strategy(spec.strategy.as_ref(), "spec.strategy", errs);
        template_spec(spec.template.spec.as_ref(), "spec.template.spec", &["Always"], errs);
    }
}

impl Rules for apps::ReplicaSet {
    fn apply_defaults(&mut self) {
        defaults::replica_set(&mut self.spec);
    }
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        check::non_negative(spec.replicas, "spec.replicas", errs);
        match &spec.template {
            Some(t) => {
                check::workload_selector(&spec.selector, t, "spec", errs);
                template_spec(t.spec.as_ref(), "spec.template.spec", &["Always"], errs);
            }
            None => errs.add("spec.template", "required"),
        }
    }
}

impl Rules for apps::DaemonSet {
    fn apply_defaults(&mut self) {
        defaults::daemon_set(&mut self.spec);
    }
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        check::workload_selector(&spec.selector, &spec.template, "spec", errs);
        template_spec(spec.template.spec.as_ref(), "spec.template.spec", &["Always"], errs);
    }
}

impl Rules for apps::StatefulSet {
    fn apply_defaults(&mut self) {
        defaults::stateful_set(&mut self.spec);
    }
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        check::non_negative(spec.replicas, "spec.replicas", errs);
        check::workload_selector(&spec.selector, &spec.template, "spec", errs);
        let claims: Vec<&str> =
            spec.volume_claim_templates.iter().flatten().filter_map(|c| c.metadata.name.as_deref()).collect();
        template_spec_claiming(spec.template.spec.as_ref(), "spec.template.spec", &["Always"], &claims, errs);
        // Its pods' DNS names live under this (headless) Service.
        match spec.service_name.as_deref() {
            None | Some("") => errs.add("spec.serviceName", "required: the headless Service its pods are named under"),
            Some(name) => {
                if let Some(problem) = check::dns_label_problem(name) {
                    errs.add("spec.serviceName", format!("{name:?} {problem}"));
                }
            }
        }
        let policy = spec.pod_management_policy.as_deref();
        check::one_of(policy, &["OrderedReady", "Parallel"], "spec.podManagementPolicy", errs);
        let strategy = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref());
        check::one_of(strategy, &["RollingUpdate", "OnDelete"], "spec.updateStrategy.type", errs);
        for (i, claim) in spec.volume_claim_templates.iter().flatten().enumerate() {
            let at = format!("spec.volumeClaimTemplates[{i}]");
            if claim.metadata.name.as_deref().is_none_or(str::is_empty) {
                errs.add(format!("{at}.metadata.name"), "required");
            }
            let claim_spec = claim.spec.as_ref();
            check::access_modes(
                claim_spec.and_then(|s| s.access_modes.as_deref()),
                &format!("{at}.spec.accessModes"),
                errs,
            );
        }
    }
}

impl Rules for batch::Job {
    fn apply_defaults(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            defaults::job(spec);
        }
    }
    fn validate(&self, errs: &mut Errors) {
        let Some(spec) = &self.spec else {
            return errs.add("spec", "required");
        };
        check::job_spec(spec, "spec", errs);
        template_spec(spec.template.spec.as_ref(), "spec.template.spec", &["OnFailure", "Never"], errs);
    }
}

impl Rules for batch::CronJob {
    fn apply_defaults(&mut self) {
        defaults::cron_job(&mut self.spec);
    }
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        check::cron_job_spec(spec, errs);
        // The name goes into its Jobs' names, with 11 characters of suffix.
        if let Some(name) = self.metadata.name.as_deref().filter(|n| n.len() > 52) {
            errs.add("metadata.name", format!("{name:?} must be no more than 52 characters"));
        }
        if let Some(job) = &spec.job_template.spec {
            check::job_spec(job, "spec.jobTemplate.spec", errs);
            template_spec(
                job.template.spec.as_ref(),
                "spec.jobTemplate.spec.template.spec",
                &["OnFailure", "Never"],
                errs,
            );
        }
    }
}

impl Rules for networking::Ingress {
    fn validate(&self, errs: &mut Errors) {
        check::ingress_spec(self.spec.as_ref(), errs);
    }
}
impl Rules for networking::IngressClass {
    fn validate(&self, errs: &mut Errors) {
        check::ingress_class_spec(self.spec.as_ref(), errs);
    }
}
impl Rules for coordination::Lease {}
impl Rules for autoscaling::HorizontalPodAutoscaler {
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        if spec.min_replicas.is_some_and(|m| m < 1) {
            errs.add("spec.minReplicas", "must be at least 1");
        }
        if spec.max_replicas < spec.min_replicas.unwrap_or(1) {
            errs.add("spec.maxReplicas", "must be greater than or equal to minReplicas");
        }
        let target = &spec.scale_target_ref;
        if target.name.is_empty() {
            errs.add("spec.scaleTargetRef.name", "required");
        }
        check::one_of(
            Some(target.kind.as_str()),
            &["Deployment", "ReplicaSet", "StatefulSet"],
            "spec.scaleTargetRef.kind",
            errs,
        );
        for (i, metric) in spec.metrics.iter().flatten().enumerate() {
            check::hpa_metric(metric, &format!("spec.metrics[{i}]"), errs);
        }
    }
}

impl Rules for rbac::Role {
    const NAMES: NameRule = NameRule::PathSegment;
    fn validate(&self, errs: &mut Errors) {
        check::rbac::policy_rules(self.rules.as_deref(), Scope::Namespace, errs);
    }
}

impl Rules for rbac::ClusterRole {
    const NAMES: NameRule = NameRule::PathSegment;
    fn validate(&self, errs: &mut Errors) {
        check::rbac::policy_rules(self.rules.as_deref(), Scope::Cluster, errs);
        check::rbac::aggregation_rule(self.aggregation_rule.as_ref(), errs);
    }
}

impl Rules for rbac::RoleBinding {
    const NAMES: NameRule = NameRule::PathSegment;
    fn apply_defaults(&mut self) {
        defaults::binding(&mut self.role_ref, self.subjects.as_mut());
    }
    fn validate(&self, errs: &mut Errors) {
        check::rbac::role_ref(&self.role_ref, Scope::Namespace, errs);
        check::rbac::subjects(self.subjects.as_deref(), Scope::Namespace, errs);
    }
}

/// The request's content (a CSR that verifies) and who made it are the
/// apiserver's to check and fill in: it holds the caller and the parser.
impl Rules for certificates::CertificateSigningRequest {
    fn validate(&self, errs: &mut Errors) {
        let spec = &self.spec;
        if spec.request.0.is_empty() {
            errs.add("spec.request", "required: a PEM certificate signing request");
        }
        if spec.signer_name.is_empty() {
            errs.add("spec.signerName", "required, such as kubernetes.io/kube-apiserver-client-kubelet");
        } else if let Some(problem) = check::label_key_problem(&spec.signer_name) {
            errs.add("spec.signerName", problem);
        }
        if spec.expiration_seconds.is_some_and(|s| s < 600) {
            errs.add("spec.expirationSeconds", "must be at least 600 (10 minutes)");
        }
    }
}

impl Rules for rbac::ClusterRoleBinding {
    const NAMES: NameRule = NameRule::PathSegment;
    fn apply_defaults(&mut self) {
        defaults::binding(&mut self.role_ref, self.subjects.as_mut());
    }
    fn validate(&self, errs: &mut Errors) {
        check::rbac::role_ref(&self.role_ref, Scope::Cluster, errs);
        check::rbac::subjects(self.subjects.as_deref(), Scope::Cluster, errs);
    }
}

fn template_spec(spec: Option<&core::PodSpec>, path: &str, restart_policies: &[&str], errs: &mut Errors) {
    template_spec_claiming(spec, path, restart_policies, &[], errs);
}

/// A template whose pods also get the volumes named in `claims`.
fn template_spec_claiming(
    spec: Option<&core::PodSpec>,
    path: &str,
    restart_policies: &[&str],
    claims: &[&str],
    errs: &mut Errors,
) {
    let Some(spec) = spec else {
        return errs.add(path, "required");
    };
    check::pod_spec(spec, path, claims, errs);
    if let Some(p) = spec.restart_policy.as_deref().filter(|p| !restart_policies.contains(p)) {
        errs.add(
            format!("{path}.restartPolicy"),
            format!("{p:?} is not allowed here: must be one of {}", restart_policies.join(", ")),
        );
    }
}

/// Decodes JSON into a typed object; a wrong type is reported with the path
/// of its field (`spec.replicas: invalid type: string "three", expected i32`).
pub fn decode_typed<T: DeserializeOwned>(value: &Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Error::field(path, e.into_inner().to_string())
    })
}

/// Paths in `given` that the typed round trip dropped: fields the kind
/// doesn't have. Nulls count as absent, as they do in Kubernetes.
fn unknown_fields(given: &Value, known: &Value, path: &str, out: &mut Vec<FieldError>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match k.get(key) {
                    None if !value.is_null() => out.push(FieldError::new(child, "unknown field")),
                    Some(kv) => unknown_fields(value, kv, &child, out),
                    None => {}
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(gv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed_pass<T: Rules>(value: Value) -> Result<Value, Error> {
    let mut obj: T = decode_typed(&value)?;
    let known = serde_json::to_value(&obj).map_err(|e| Error::field("", e.to_string()))?;
    let mut errors = Vec::new();
    unknown_fields(&value, &known, "", &mut errors);
    obj.apply_defaults();
    let mut errs = Errors::default();
    check::metadata(obj.metadata(), T::NAMES, &mut errs);
    obj.validate(&mut errs);
    errors.extend(errs.0);
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    serde_json::to_value(&obj).map_err(|e| Error::field("", e.to_string()))
}

/// Runs the typed pass for `info`'s kind on an object: checks its size,
/// apiVersion and kind, decodes, defaults and validates it, and returns the
/// normalized JSON to store.
pub fn normalize(info: &KindInfo, mut value: Value, encoded_len: usize) -> Result<Value, Error> {
    if encoded_len > MAX_OBJECT_BYTES {
        return Err(Error::TooLarge { size: encoded_len, limit: MAX_OBJECT_BYTES });
    }
    let Some(root) = value.as_object_mut() else {
        return Err(Error::field("", "an object must be a JSON/YAML mapping"));
    };
    match root.get("apiVersion") {
        None | Some(Value::Null) => {
            root.insert("apiVersion".into(), info.api_version.into());
        }
        Some(Value::String(v)) if v == info.api_version => {}
        Some(other) => {
            return Err(Error::WrongApiVersion {
                kind: info.kind.into(),
                api_version: other.as_str().map_or_else(|| other.to_string(), str::to_string),
                expected: info.api_version.into(),
            })
        }
    }
    match root.get("kind") {
        None | Some(Value::Null) => {
            root.insert("kind".into(), info.kind.into());
        }
        Some(Value::String(k)) if k == info.kind => {}
        Some(other) => {
            return Err(Error::field("kind", format!("{other} does not match the requested kind {}", info.kind)))
        }
    }
    struct TypedPass(Value);
    impl KindVisitor for TypedPass {
        type Output = Result<Value, Error>;
        fn visit<K: Rules + schemars::JsonSchema>(self) -> Self::Output {
            typed_pass::<K>(self.0)
        }
    }
    visit_kind(info.kind, TypedPass(value)).unwrap_or_else(|| Err(Error::UnknownKind(info.kind.into())))
}

/// Something done with the k8s-openapi type of a served kind: admission's
/// typed pass, its OpenAPI schema.
pub(crate) trait KindVisitor {
    type Output;
    fn visit<K: Rules + schemars::JsonSchema>(self) -> Self::Output;
}

/// Calls `visitor` with the type of `kind`: the one place a kind's name
/// picks its type. None for a kind skiff does not serve.
pub(crate) fn visit_kind<V: KindVisitor>(kind: &str, visitor: V) -> Option<V::Output> {
    Some(match kind {
        "Namespace" => visitor.visit::<core::Namespace>(),
        "Node" => visitor.visit::<core::Node>(),
        "Pod" => visitor.visit::<core::Pod>(),
        "Service" => visitor.visit::<core::Service>(),
        "Endpoints" => visitor.visit::<core::Endpoints>(),
        "ConfigMap" => visitor.visit::<core::ConfigMap>(),
        "Secret" => visitor.visit::<core::Secret>(),
        "ResourceQuota" => visitor.visit::<core::ResourceQuota>(),
        "LimitRange" => visitor.visit::<core::LimitRange>(),
        "ServiceAccount" => visitor.visit::<core::ServiceAccount>(),
        "Event" => visitor.visit::<core::Event>(),
        "PersistentVolume" => visitor.visit::<core::PersistentVolume>(),
        "PersistentVolumeClaim" => visitor.visit::<core::PersistentVolumeClaim>(),
        "StorageClass" => visitor.visit::<storage::StorageClass>(),
        "Deployment" => visitor.visit::<apps::Deployment>(),
        "ReplicaSet" => visitor.visit::<apps::ReplicaSet>(),
        "DaemonSet" => visitor.visit::<apps::DaemonSet>(),
        "StatefulSet" => visitor.visit::<apps::StatefulSet>(),
        "Job" => visitor.visit::<batch::Job>(),
        "CronJob" => visitor.visit::<batch::CronJob>(),
        "Ingress" => visitor.visit::<networking::Ingress>(),
        "IngressClass" => visitor.visit::<networking::IngressClass>(),
        "Lease" => visitor.visit::<coordination::Lease>(),
        "HorizontalPodAutoscaler" => visitor.visit::<autoscaling::HorizontalPodAutoscaler>(),
        "Role" => visitor.visit::<rbac::Role>(),
        "ClusterRole" => visitor.visit::<rbac::ClusterRole>(),
        "RoleBinding" => visitor.visit::<rbac::RoleBinding>(),
        "ClusterRoleBinding" => visitor.visit::<rbac::ClusterRoleBinding>(),
        "CertificateSigningRequest" => visitor.visit::<certificates::CertificateSigningRequest>(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: &str, v: Value) -> Result<Value, Error> {
        normalize(KindInfo::by_kind(kind).unwrap(), v, 100)
    }

    #[test]
    fn string_data_is_merged_into_data_and_not_kept() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
                            "data": {"a": "b2xk", "b": "a2VwdA=="}, "stringData": {"a": "new"}});
        let stored = run("Secret", secret).unwrap();
        assert_eq!(stored["data"]["a"], "bmV3", "stringData wins");
        assert_eq!(stored["data"]["b"], "a2VwdA==");
        assert!(stored.get("stringData").is_none(), "{stored}");
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}}
            }
        })
    }

    fn ingress(spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "demo"}, "spec": spec})
    }

    /// The field paths of what `normalize` refused.
    fn refused(kind: &str, v: Value) -> Vec<String> {
        match run(kind, v) {
            Err(Error::Invalid(errs)) => errs.into_iter().map(|e| e.to_string()).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn ingress_classes_need_a_domain_prefixed_controller() {
        let class = |spec: Value| {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                   "metadata": {"name": "skiff", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
                   "spec": spec})
        };
        run("IngressClass", class(json!({"controller": "skiff.io/ingress-controller"}))).unwrap();
        assert_eq!(refused("IngressClass", class(json!({}))).len(), 1);
        let errs = refused("IngressClass", class(json!({"controller": "no-domain"})));
        assert!(errs[0].contains("spec.controller"), "{errs:?}");
    }

    fn rbac(kind: &str, name: &str, namespace: Option<&str>, body: Value) -> Value {
        let mut obj = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}});
        if let Some(ns) = namespace {
            obj["metadata"]["namespace"] = ns.into();
        }
        obj.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        obj
    }

    #[test]
    fn admits_roles_as_kubernetes_writes_them() {
        let rules = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["*"]}
        ]});
        run("Role", rbac("Role", "pod-reader", Some("default"), rules.clone())).unwrap();
        run("ClusterRole", rbac("ClusterRole", "system:pod-reader", None, rules)).unwrap();
        let health = json!({"rules": [{"nonResourceURLs": ["/healthz", "/metrics"], "verbs": ["get"]}]});
        run("ClusterRole", rbac("ClusterRole", "health", None, health)).unwrap();
        let aggregated = json!({"aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}});
        run("ClusterRole", rbac("ClusterRole", "view", None, aggregated)).unwrap();
    }

    #[test]
    fn refuses_bad_rules_naming_the_field() {
        let bad = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": []},
            {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
            {"verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "nonResourceURLs": ["/metrics"], "verbs": ["get"]}
        ]});
        let errs = refused("Role", rbac("Role", "r", Some("default"), bad.clone()));
        let has = |errs: &[String], prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
        assert!(has(&errs, "rules[0].verbs: required"), "{errs:?}");
        assert!(has(&errs, "rules[1].nonResourceURLs: namespaced rules cannot apply to non-resource URLs"), "{errs:?}");
        assert!(has(&errs, "rules[2].apiGroups: required"), "{errs:?}");
        assert!(has(&errs, "rules[2].resources: required"), "{errs:?}");
        assert!(has(&errs, "rules[3].nonResourceURLs: rules cannot apply to both"), "{errs:?}");
        assert_eq!(errs.len(), 6, "{errs:?}");

        let errs = refused("ClusterRole", rbac("ClusterRole", "r", None, bad));
        assert!(!has(&errs, "rules[1]"), "a ClusterRole may name non-resource URLs: {errs:?}");
        assert_eq!(errs.len(), 4, "{errs:?}");

        let errs = refused(
            "ClusterRole",
            rbac("ClusterRole", "r", None, json!({"aggregationRule": {"clusterRoleSelectors": []}})),
        );
        assert!(has(&errs, "aggregationRule.clusterRoleSelectors: required"), "{errs:?}");
        let errs = refused("Role", rbac("Role", "a/b", Some("default"), json!({})));
        assert!(has(&errs, "metadata.name: \"a/b\" may not contain '/'"), "{errs:?}");
    }

    #[test]
    fn admits_and_defaults_bindings_as_kubernetes_writes_them() {
        let binding = json!({
            "roleRef": {"kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "builder"}]
        });
        let rb = run("RoleBinding", rbac("RoleBinding", "edit", Some("team-a"), binding)).unwrap();
        assert_eq!(rb["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(rb["subjects"][1]["apiGroup"], "rbac.authorization.k8s.io");
        assert!(rb["subjects"][2].get("apiGroup").is_none(), "{rb}");
        assert!(rb["subjects"][2].get("namespace").is_none(), "the authorizer reads it as the binding's: {rb}");

        let crb = json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kube-scheduler"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-scheduler"},
                         {"kind": "ServiceAccount", "name": "dns", "namespace": "kube-system"}]
        });
        run("ClusterRoleBinding", rbac("ClusterRoleBinding", "system:kube-scheduler", None, crb)).unwrap();
    }

    #[test]
    fn refuses_bad_bindings_naming_the_field() {
        let bad = json!({
            "roleRef": {"apiGroup": "example.com", "kind": "Role", "name": ""},
            "subjects": [{"kind": "ServiceAccount", "name": "builder"},
                         {"kind": "Robot", "name": "r2"},
                         {"kind": "User", "name": ""},
                         {"kind": "Group", "apiGroup": "example.com", "name": "devs"},
                         {"kind": "ServiceAccount", "apiGroup": "rbac.authorization.k8s.io", "name": "Bad_Name", "namespace": "a"}]
        });
        let errs = refused("ClusterRoleBinding", rbac("ClusterRoleBinding", "b", None, bad.clone()));
        let has = |errs: &[String], prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
        assert!(has(&errs, "roleRef.apiGroup: unsupported value \"example.com\""), "{errs:?}");
        assert!(has(&errs, "roleRef.kind: unsupported value \"Role\": must be one of ClusterRole"), "{errs:?}");
        assert!(has(&errs, "roleRef.name: required"), "{errs:?}");
        assert!(has(&errs, "subjects[0].namespace: required"), "{errs:?}");
        assert!(has(&errs, "subjects[1].kind: unsupported value \"Robot\""), "{errs:?}");
        assert!(has(&errs, "subjects[2].name: required"), "{errs:?}");
        assert!(has(&errs, "subjects[3].apiGroup: unsupported value \"example.com\""), "{errs:?}");
        assert!(has(&errs, "subjects[4].name: \"Bad_Name\" is not a valid DNS-1123 subdomain"), "{errs:?}");
        assert!(has(&errs, "subjects[4].apiGroup: unsupported value"), "{errs:?}");
        assert_eq!(errs.len(), 9, "{errs:?}");

        // In a RoleBinding, a Role is a fine roleRef and a ServiceAccount
        // without a namespace is the binding's own.
        let errs = refused("RoleBinding", rbac("RoleBinding", "b", Some("default"), bad));
        assert!(!has(&errs, "roleRef.kind") && !has(&errs, "subjects[0]"), "{errs:?}");
        assert_eq!(errs.len(), 7, "{errs:?}");
        let errs = refused(
            "RoleBinding",
            rbac("RoleBinding", "b", Some("default"), json!({"roleRef": {"kind": "", "name": "x"}})),
        );
        assert_eq!(errs, ["roleRef.kind: required: one of Role, ClusterRole"]);
    }

    #[test]
    fn admits_ingresses_as_kubernetes_writes_them() {
        let ok = ingress(json!({
            "ingressClassName": "skiff",
            "tls": [{"hosts": ["demo.localtest.me", "*.apps.example.com"], "secretName": "demo-tls"}],
            "rules": [
                {"host": "demo.localtest.me", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                    {"path": "/api", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"name": "http"}}}}
                ]}},
                {"host": "*.apps.example.com", "http": {"paths": [
                    {"pathType": "ImplementationSpecific", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
                ]}}
            ]
        }));
        run("Ingress", ok).unwrap();
        run("Ingress", ingress(json!({"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}})))
            .unwrap();
    }

    #[test]
    fn refuses_bad_ingresses_naming_the_field() {
        let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
        let errs = refused(
            "Ingress",
            ingress(json!({"rules": [
                {"host": "demo.localtest.me:8080", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}},
                {"host": "10.0.0.1", "http": {"paths": [{"path": "/", "pathType": "Regex", "backend": backend}]}},
                {"host": "Bad_Host", "http": {"paths": [{"path": "api", "pathType": "Exact", "backend": {}}]}}
            ]})),
        );
        let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
        assert!(has("spec.rules[0].host: \"demo.localtest.me:8080\" must be a host name without a port"), "{errs:?}");
        assert!(has("spec.rules[1].host: \"10.0.0.1\" must be a DNS name"), "{errs:?}");
        assert!(has("spec.rules[1].http.paths[0].pathType: unsupported value \"Regex\""), "{errs:?}");
        assert!(has("spec.rules[2].host:"), "{errs:?}");
        assert!(has("spec.rules[2].http.paths[0].path:"), "{errs:?}");
        assert!(has("spec.rules[2].http.paths[0].backend: one of service or resource"), "{errs:?}");
        assert_eq!(errs.len(), 6, "{errs:?}");

        let errs = refused("Ingress", ingress(json!({})));
        assert!(errs[0].starts_with("spec: either defaultBackend or rules"), "{errs:?}");
        let errs =
            refused("Ingress", ingress(json!({"defaultBackend": {"service": {"name": "web", "port": {"number": 0}}}})));
        assert!(errs[0].starts_with("spec.defaultBackend.service.port.number:"), "{errs:?}");
    }

    #[test]
    fn defaults_a_deployment() {
        let d = run("Deployment", deployment()).unwrap();
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn names_the_field_of_a_wrong_type() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!("three");
        let err = run("Deployment", d).unwrap_err().to_string();
        assert!(err.starts_with("spec.replicas: invalid type: string \"three\""), "{err}");
    }

    #[test]
    fn refuses_unknown_fields() {
        let mut d = deployment();
        d["spec"]["replicaz"] = json!(3);
        d["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
        let err = run("Deployment", d).unwrap_err().to_string();
        assert!(err.contains("spec.replicaz: unknown field"), "{err}");
        assert!(err.contains("spec.template.spec.containers[0].imagee: unknown field"), "{err}");
    }

    #[test]
    fn refuses_a_selector_that_misses_the_template() {
        let mut d = deployment();
        d["spec"]["selector"]["matchLabels"]["app"] = json!("other");
        let err = run("Deployment", d).unwrap_err().to_string();
        assert!(err.contains("spec.template.metadata.labels: `selector` does not match"), "{err}");
    }

    #[test]
    fn refuses_negative_replicas_and_zero_surge_with_zero_unavailable() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
        let err = run("Deployment", d).unwrap_err().to_string();
        assert!(err.contains("spec.replicas: -1 must be greater than or equal to 0"), "{err}");
        assert!(err.contains("spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is 0"), "{err}");
    }

    #[test]
    fn refuses_bad_names_and_labels() {
        let mut d = deployment();
        d["metadata"]["name"] = json!("Web_App");
        d["metadata"]["labels"] = json!({"bad key": "x"});
        let err = run("Deployment", d).unwrap_err().to_string();
        assert!(err.contains("metadata.name: \"Web_App\" is not a valid DNS-1123 subdomain"), "{err}");
        assert!(err.contains("metadata.labels[\"bad key\"]"), "{err}");
    }

    #[test]
    fn refuses_wrong_api_version_and_size() {
        let mut d = deployment();
        d["apiVersion"] = json!("v1");
        assert!(matches!(run("Deployment", d), Err(Error::WrongApiVersion { .. })));
        let big = normalize(KindInfo::by_kind("ConfigMap").unwrap(), json!({}), MAX_OBJECT_BYTES + 1);
        assert!(matches!(big, Err(Error::TooLarge { .. })));
    }

    #[test]
    fn validates_pods_and_tolerations() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": ""}, {"name": "a", "image": "x"}],
            "tolerations": [{"key": "k", "operator": "Sometimes"}],
            "restartPolicy": "Maybe"}});
        let err = run("Pod", pod).unwrap_err().to_string();
        assert!(err.contains("spec.containers[0].image: required"), "{err}");
        assert!(err.contains("spec.containers[1].name: duplicate container name"), "{err}");
        assert!(err.contains("spec.tolerations[0].operator: unsupported value \"Sometimes\""), "{err}");
        assert!(err.contains("spec.restartPolicy: unsupported value \"Maybe\""), "{err}");
        let ok =
            run("Pod", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}}))
                .unwrap();
        assert_eq!(ok["status"]["phase"], "Pending");
        assert_eq!(ok["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }

    #[test]
    fn volume_names_are_unique_labels_that_mounts_name() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "x", "volumeMounts": [
                {"name": "data", "mountPath": "/data"}, {"name": "absent", "mountPath": "/absent"}]}],
            "volumes": [{"name": "/etc", "emptyDir": {}}, {"name": "../x", "emptyDir": {}},
                        {"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]}});
        let err = run("Pod", pod).unwrap_err().to_string();
        assert!(err.contains("spec.volumes[0].name: \"/etc\" is not a valid DNS-1123 label"), "{err}");
        assert!(err.contains("spec.volumes[1].name: \"../x\" is not a valid DNS-1123 label"), "{err}");
        assert!(err.contains("spec.volumes[3].name: duplicate volume name \"data\""), "{err}");
        assert!(err.contains("spec.containers[0].volumeMounts[1].name: no volume named \"absent\""), "{err}");
        assert!(!err.contains("volumeMounts[0]"), "{err}");
    }

    #[test]
    fn numbers_from_clients_are_bounded() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "x",
                            "resources": {"requests": {"cpu": "99999999999999999999999E"}}}],
            "terminationGracePeriodSeconds": -1,
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}});
        let err = run("Pod", pod).unwrap_err().to_string();
        assert!(
            err.contains(
                "spec.containers[0].resources.requests.cpu: quantity \"99999999999999999999999E\" is too large"
            ),
            "{err}"
        );
        assert!(err.contains("spec.terminationGracePeriodSeconds: must not be negative"), "{err}");
        assert!(err.contains("spec.tolerations[0].effect: must be NoExecute when tolerationSeconds is set"), "{err}");
    }

    #[test]
    fn defaults_and_validates_services() {
        let svc = run("Service", json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        let err = run(
            "Service",
            json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80, "nodePort": 70000}, {"port": 70000}]}}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("spec.ports[0].name: required"), "{err}");
        assert!(err.contains("spec.ports[0].nodePort: 70000 is not a valid port number"), "{err}");
        assert!(err.contains("spec.ports[1].port: 70000 is not a valid port"), "{err}");
    }
}
