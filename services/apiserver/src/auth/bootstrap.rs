//! The default policy the apiserver creates at start, after Kubernetes'
//! bootstrap policy (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`):
//!
//! - `cluster-admin`, everything, bound to the group `system:masters`;
//! - `admin`, `edit` and `view` for people, aggregated from
//!   `system:aggregate-to-admin|edit|view` (and from each other: view's
//!   rules aggregate into edit, edit's into admin), so more rules can be
//!   added by labelling another ClusterRole;
//! - one least-privilege role per skiff component, bound to the user of the
//!   same name (the kubelets': to the group `system:nodes`). Each grants
//!   what that component's code does through the API and no more: the
//!   kinds its informers list and watch, the objects it writes, its Events
//!   and its leader Lease.
//!
//! Every object carries Kubernetes' bootstrapping label and autoupdate
//! annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use skiff_api::well_known::{
    APISERVER_KUBELET_CLIENT_USER, BOOTSTRAPPERS_GROUP, CONTROLLER_MANAGER_LEASE, CONTROLLER_MANAGER_USER, DNS_USER,
    INGRESS_USER, MASTERS_GROUP, NODES_GROUP, OVERLAY_USER, RBAC_GROUP, SCHEDULER_LEASE, SCHEDULER_USER,
};
use skiff_api::{KindInfo, KINDS};

/// The label Kubernetes puts on its default RBAC objects.
pub const BOOTSTRAPPING_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// Objects with this annotation `"true"` are reset to their defaults at
/// start; an administrator sets it to `"false"` to keep their own edits.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The node role and the group its binding grants it to. Kubelets act as
/// `system:node:<node name>` in this group.
pub const NODE_ROLE: &str = "system:node";
const NODE_BOOTSTRAPPER_ROLE: &str = "system:node-bootstrapper";
const CERTIFICATES_GROUP: &str = "certificates.k8s.io";

const CLUSTER_ADMIN: &str = "cluster-admin";
/// What may use every kubelet's API; the apiserver's kubelet client has it.
const KUBELET_API_ADMIN: &str = "system:kubelet-api-admin";
const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete"];
/// What an informer does: list, then watch.
const INFORM: &[&str] = &["list", "watch"];
/// What an EventRecorder does: create, or on a repeat get the Event and
/// patch its count.
const RECORD: &[&str] = &["create", "get", "patch"];

/// Every default ClusterRole.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let mut roles = vec![cluster_admin()];
    roles.extend(user_facing_roles());
    roles.extend([
        scheduler(),
        controller_manager(),
        node(),
        node_bootstrapper(),
        kubelet_api_admin(),
        overlay(),
        dns(),
        ingress(),
    ]);
    roles
}

/// Every default ClusterRoleBinding: each named after its role.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding(CLUSTER_ADMIN, "Group", MASTERS_GROUP),
        binding(SCHEDULER_USER, "User", SCHEDULER_USER),
        binding(CONTROLLER_MANAGER_USER, "User", CONTROLLER_MANAGER_USER),
        binding(NODE_ROLE, "Group", NODES_GROUP),
        binding(NODE_BOOTSTRAPPER_ROLE, "Group", BOOTSTRAPPERS_GROUP),
        binding(KUBELET_API_ADMIN, "User", APISERVER_KUBELET_CLIENT_USER),
        binding(OVERLAY_USER, "User", OVERLAY_USER),
        binding(DNS_USER, "User", DNS_USER),
        binding(INGRESS_USER, "User", INGRESS_USER),
    ]
}

// === cluster-admin, admin, edit, view ===

fn cluster_admin() -> ClusterRole {
    let non_resource =
        PolicyRule { non_resource_urls: Some(vec!["*".into()]), verbs: vec!["*".into()], ..Default::default() };
    cluster_role(CLUSTER_ADMIN, &[], vec![rule(&["*"], "*", &["*"]), non_resource])
}

/// `admin` ⊇ `edit` ⊇ `view`, each an aggregate, and the
/// `system:aggregate-to-*` roles that hold their rules.
fn user_facing_roles() -> Vec<ClusterRole> {
    vec![
        aggregated("admin", None, "admin"),
        aggregated("edit", Some("admin"), "edit"),
        aggregated("view", Some("edit"), "view"),
        cluster_role("system:aggregate-to-admin", &[(&aggregate_label("admin"), "true")], admin_rules()),
        cluster_role("system:aggregate-to-edit", &[(&aggregate_label("edit"), "true")], edit_rules()),
        cluster_role("system:aggregate-to-view", &[(&aggregate_label("view"), "true")], view_rules()),
    ]
}

/// Kinds people manage in their namespaces: all namespaced ones but the
/// RBAC kinds (admin's alone) and Leases (components' coordination, as
/// Kubernetes keeps coordination.k8s.io out of these roles).
fn for_people(kind: &KindInfo) -> bool {
    !matches!(kind.kind, "Role" | "RoleBinding" | "Lease")
}

/// Reading what runs in a namespace, but never Secrets: a viewer must not
/// learn credentials.
fn view_rules() -> Vec<PolicyRule> {
    let mut rules = namespaced_kinds(READ, |k| for_people(k) && k.kind != "Secret");
    rules.push(rule(READ, "", &["namespaces"]));
    rules.push(rule(&["get"], "", &["pods/log"]));
    rules
}

/// Changing what runs in a namespace, Secrets included (edit can run a pod
/// that mounts any Secret anyway). Endpoints stay read-only, as Kubernetes
/// made them after CVE-2021-25740: hand-written endpoints could send a
/// Service's traffic anywhere. No `/status` writes: those are controllers'.
/// ResourceQuotas and LimitRanges are read-only here, as in Kubernetes:
/// whoever sets a namespace's bounds is above its editors and admins.
fn edit_rules() -> Vec<PolicyRule> {
    let bounds = |k: &KindInfo| matches!(k.kind, "Endpoints" | "ResourceQuota" | "LimitRange");
    let mut rules = namespaced_kinds(WRITE, |k| for_people(k) && !bounds(k));
    rules.push(rule(READ, "", &["secrets"]));
    rules.push(rule(&["create"], "", &["pods/exec"]));
    rules
}

/// Granting access within a namespace.
fn admin_rules() -> Vec<PolicyRule> {
    vec![rule(&[READ, WRITE].concat(), RBAC_GROUP, &["roles", "rolebindings"])]
}

// === the components ===

/// kube-scheduler's needs: all Pods and Nodes through informers (and the
/// claims, volumes and classes pods mount, for where they may run), Bind,
/// PodScheduled=False through UpdateStatus (re-reading the pod on a
/// conflict), FailedScheduling/Scheduled Events, its Lease. No Secrets.
fn scheduler() -> ClusterRole {
    let mut rules = vec![
        rule(READ, "", &["pods"]),
        rule(INFORM, "", &["nodes", "persistentvolumes"]),
        // A claim waiting for its first consumer learns the chosen node.
        rule(&["list", "watch", "patch"], "", &["persistentvolumeclaims"]),
        rule(INFORM, "storage.k8s.io", &["storageclasses"]),
        rule(&["create"], "", &["pods/binding"]),
        rule(&["update"], "", &["pods/status"]),
        rule(RECORD, "", &["events"]),
    ];
    rules.extend(leader_lease(SCHEDULER_LEASE));
    cluster_role(SCHEDULER_USER, &[], rules)
}

/// The controllers' needs (services/controller-manager/src/controllers):
/// - replicaset: creates, deletes and adopts (patches) Pods; RS status;
/// - deployment: creates, updates, deletes and adopts ReplicaSets; patches
///   its Deployment's revision; Deployment status;
/// - garbage_collector: gets owners it doesn't have cached, deletes and
///   patches (owner references, finalizers) every collected kind: Pods,
///   ReplicaSets, Deployments, DaemonSets, StatefulSets, Jobs, CronJobs;
/// - daemonset: creates and deletes Pods; DaemonSet status;
/// - job: creates, deletes and patches (tracking finalizer) Pods; deletes
///   Jobs past their TTL; Job status;
/// - cronjob: creates and deletes Jobs; CronJob status;
/// - statefulset: creates and deletes Pods, creates and patches (owners)
///   PersistentVolumeClaims; StatefulSet status;
/// - horizontalpodautoscaler: reads its scale targets (get) and their
///   pods' stats (list pods), patches their replicas; HPA status;
/// - persistentvolume: binds claims to volumes (both sides, and their
///   status), provisions local-path volumes, deletes released ones;
/// - node_lifecycle: Node status and taints (update), Pod Ready conditions;
///   reads node heartbeats in kube-node-lease;
/// - taint_eviction: deletes Pods; node_ipam: patches Node podCIDRs;
/// - endpoints: reads Services and Pods, writes Endpoints;
/// - namespace: lists and deletes everything in a terminating namespace
///   (every namespaced kind), then finalizes it through UpdateStatus.
fn controller_manager() -> ClusterRole {
    let mut rules = vec![
        rule(&["get", "list", "watch", "create", "patch", "delete"], "", &["pods"]),
        rule(&["update"], "", &["pods/status"]),
        rule(&[READ, WRITE].concat(), "apps", &["replicasets"]),
        rule(&["update"], "apps", &["replicasets/status"]),
        rule(&["get", "list", "watch", "patch"], "apps", &["deployments"]),
        rule(&["update"], "apps", &["deployments/status"]),
        rule(&["get", "list", "watch", "patch"], "apps", &["daemonsets", "statefulsets"]),
        rule(&["update"], "apps", &["daemonsets/status", "statefulsets/status"]),
        rule(&[READ, WRITE].concat(), "batch", &["jobs"]),
        rule(&["get", "list", "watch", "patch"], "batch", &["cronjobs"]),
        rule(&["update"], "batch", &["jobs/status", "cronjobs/status"]),
        rule(&["get", "list", "watch", "create", "patch", "delete"], "", &["persistentvolumeclaims"]),
        rule(&["update"], "", &["persistentvolumeclaims/status", "persistentvolumes/status"]),
        rule(&[READ, WRITE].concat(), "", &["persistentvolumes"]),
        rule(INFORM, "storage.k8s.io", &["storageclasses"]),
        rule(INFORM, "autoscaling", &["horizontalpodautoscalers"]),
        rule(&["update"], "autoscaling", &["horizontalpodautoscalers/status"]),
        rule(&["list", "watch", "update", "patch"], "", &["nodes"]),
        rule(&["update"], "", &["nodes/status"]),
        rule(INFORM, "", &["namespaces", "services"]),
        rule(&["update"], "", &["namespaces/status"]),
        rule(&["list", "watch", "create", "update", "delete"], "", &["endpoints"]),
        rule(INFORM, "coordination.k8s.io", &["leases"]),
        rule(RECORD, "", &["events"]),
        // Recounts quotas' usage (other kinds are listed below).
        rule(INFORM, "", &["resourcequotas"]),
        rule(&["update"], "", &["resourcequotas/status"]),
        // Approves and signs nodes' certificate requests; deletes old ones.
        rule(&[READ, &["delete"]].concat(), CERTIFICATES_GROUP, &["certificatesigningrequests"]),
        rule(&["update"], CERTIFICATES_GROUP, &["certificatesigningrequests/status"]),
    ];
    rules.extend(namespaced_kinds(&["list", "delete"], |_| true));
    rules.extend(leader_lease(CONTROLLER_MANAGER_LEASE));
    cluster_role(CONTROLLER_MANAGER_USER, &[], rules)
}

/// The kubelet's needs, real or hollow: registers its Node (create, or get
/// and patch labels and podCIDR) and writes its status; watches its Node
/// (CNI config) and its Pods; writes pod status and the final delete;
/// renews its Lease in kube-node-lease (patch, else create). The
/// ConfigMaps, Secrets and claims its pods use are the Node authorizer's
/// to allow, one by one (`node_authorizer.rs`).
fn node() -> ClusterRole {
    cluster_role(
        NODE_ROLE,
        &[],
        vec![
            rule(&["create", "get", "list", "watch", "patch"], "", &["nodes"]),
            rule(&["update"], "", &["nodes/status"]),
            rule(&["list", "watch", "delete"], "", &["pods"]),
            rule(&["update"], "", &["pods/status"]),
            // Secrets, ConfigMaps and claims only as the Node authorizer
            // allows: those its pods name, one by one.
            rule(INFORM, "", &["persistentvolumes"]),
            // Hollow nodes' failure injection, by name only.
            PolicyRule {
                resource_names: Some(vec![skiff_api::well_known::HOLLOW_CONTROL.into()]),
                ..rule(READ, "", &["configmaps"])
            },
            // skiff-overlay on a joined node acts as the node, as kube-proxy
            // may: Service rules from Services and Endpoints.
            rule(INFORM, "", &["services", "endpoints"]),
            rule(&["create", "patch"], "coordination.k8s.io", &["leases"]),
            rule(RECORD, "", &["events"]),
            // The kubelet API asks the apiserver who may use it.
            rule(&["create"], "authorization.k8s.io", &["subjectaccessreviews"]),
            // Tokens for the pods it runs, projected into them.
            rule(&["create"], "", &["serviceaccounts/token"]),
            // Its API's serving certificate, and renewals.
            rule(&["create", "get", "list", "watch"], CERTIFICATES_GROUP, &["certificatesigningrequests"]),
        ],
    )
}

/// What a bootstrap token may do: ask for a node's client certificate and
/// wait for it, as Kubernetes' role of that name.
fn node_bootstrapper() -> ClusterRole {
    cluster_role(
        NODE_BOOTSTRAPPER_ROLE,
        &[],
        vec![rule(&["create", "get", "list", "watch"], CERTIFICATES_GROUP, &["certificatesigningrequests"])],
    )
}

/// Everything a kubelet's API serves: container logs and exec
/// (`nodes/proxy`), stats, and the node's log and metrics, as Kubernetes'
/// role of that name.
fn kubelet_api_admin() -> ClusterRole {
    cluster_role(
        KUBELET_API_ADMIN,
        &[],
        vec![
            rule(&["get", "list", "watch", "proxy"], "", &["nodes"]),
            rule(&["*"], "", &["nodes/proxy", "nodes/stats", "nodes/log", "nodes/metrics", "nodes/spec"]),
        ],
    )
}

/// skiff-overlay: Nodes (peers, podCIDRs) and Services with their
/// Endpoints (the VIP rules); patches its own Node's WireGuard key and
/// endpoint annotations; Warning Events about bad peers.
fn overlay() -> ClusterRole {
    cluster_role(
        OVERLAY_USER,
        &[],
        vec![
            rule(&["list", "watch", "patch"], "", &["nodes"]),
            rule(INFORM, "", &["services", "endpoints"]),
            rule(RECORD, "", &["events"]),
        ],
    )
}

/// skiff-dns only reads: Services, Endpoints and Pods make the zone.
fn dns() -> ClusterRole {
    cluster_role(DNS_USER, &[], vec![rule(INFORM, "", &["services", "endpoints", "pods"])])
}

/// skiff-ingress: Ingresses and IngressClasses (routes), Services and
/// Endpoints (backends), Secrets (TLS certificates); writes
/// status.loadBalancer of Ingresses and LoadBalancer Services, and Warning
/// Events about what it cannot serve.
fn ingress() -> ClusterRole {
    cluster_role(
        INGRESS_USER,
        &[],
        vec![
            rule(INFORM, "networking.k8s.io", &["ingresses", "ingressclasses"]),
            rule(&["update"], "networking.k8s.io", &["ingresses/status"]),
            rule(INFORM, "", &["services", "endpoints", "secrets"]),
            rule(&["update"], "", &["services/status"]),
            rule(RECORD, "", &["events"]),
        ],
    )
}

/// Leader election (crates/client/src/leader): get the Lease, create it if
/// missing, update it to acquire and renew. Kubernetes' way: create any
/// (a create names no object), get and update only one's own. A Lease
/// renamed with `--lease-name` needs a role of its own.
fn leader_lease(name: &str) -> [PolicyRule; 2] {
    let own = PolicyRule {
        resource_names: Some(vec![name.into()]),
        ..rule(&["get", "update"], "coordination.k8s.io", &["leases"])
    };
    [rule(&["create"], "coordination.k8s.io", &["leases"]), own]
}

// === building blocks ===

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// One rule per API group over the namespaced kinds `pick` keeps, from the
/// kinds skiff serves, so a new kind joins the roles that cover it.
fn namespaced_kinds(verbs: &[&str], pick: impl Fn(&KindInfo) -> bool) -> Vec<PolicyRule> {
    let mut by_group = BTreeMap::<&str, Vec<&str>>::new();
    for kind in KINDS.iter().filter(|k| k.namespaced && pick(k)) {
        by_group.entry(kind.group()).or_default().push(kind.plural);
    }
    by_group.into_iter().map(|(group, plurals)| rule(verbs, group, &plurals)).collect()
}

fn aggregate_label(role: &str) -> String {
    format!("{AGGREGATE_TO}{role}")
}

/// A role whose rules are those of every ClusterRole labelled
/// aggregate-to-`selects`, itself labelled aggregate-to-`into`.
fn aggregated(name: &str, into: Option<&str>, selects: &str) -> ClusterRole {
    let label = into.map(aggregate_label);
    let labels: Vec<(&str, &str)> = label.iter().map(|l| (l.as_str(), "true")).collect();
    let selector = LabelSelector {
        match_labels: Some([(aggregate_label(selects), "true".to_string())].into()),
        ..Default::default()
    };
    ClusterRole {
        aggregation_rule: Some(AggregationRule { cluster_role_selectors: Some(vec![selector]) }),
        ..cluster_role(name, &labels, Vec::new())
    }
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole { metadata: metadata(name, labels), rules: Some(rules), aggregation_rule: None }
}

fn binding(role: &str, subject_kind: &str, subject: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: metadata(role, &[]),
        role_ref: RoleRef { api_group: Some(RBAC_GROUP.into()), kind: "ClusterRole".into(), name: role.into() },
        subjects: Some(vec![Subject {
            api_group: Some(RBAC_GROUP.into()),
            kind: subject_kind.into(),
            name: subject.into(),
            namespace: None,
        }]),
    }
}

fn metadata(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let labels = labels.iter().chain([&BOOTSTRAPPING_LABEL]).map(|(k, v)| (k.to_string(), v.to_string()));
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(labels.collect()),
        annotations: Some([(AUTOUPDATE_ANNOTATION.to_string(), "true".to_string())].into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
