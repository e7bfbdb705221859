use k8s_openapi::api::rbac::v1::RoleBinding;
use serde_json::json;

use super::*;
use crate::auth::rbac::{Attributes, Policy, UserInfo};

/// The bootstrap policy, plus `extra` RoleBindings as people would add them.
fn policy(extra: Vec<RoleBinding>) -> Policy {
    Policy::build(Vec::new(), cluster_roles(), extra, cluster_role_bindings())
}

fn user(name: &str) -> UserInfo {
    UserInfo { name: name.into(), uid: String::new(), groups: vec!["system:authenticated".into()] }
}

fn node_user(node: &str) -> UserInfo {
    UserInfo { groups: vec![NODES_GROUP.into(), "system:authenticated".into()], ..user(&format!("system:node:{node}")) }
}

/// `verb` on `resource` (`pods/binding`, `deployments` in `apps`…) in `namespace`.
fn request<'a>(verb: &'a str, resource: &'a str, namespace: &'a str) -> Attributes<'a> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let api_group = KindInfo::lookup(resource).map_or("", |k| k.group());
    Attributes { verb, api_group, resource, subresource, namespace, name: "" }
}

fn named<'a>(attrs: Attributes<'a>, name: &'a str) -> Attributes<'a> {
    Attributes { name, ..attrs }
}

/// Whether `who` may do each of `requests`, as `verb resource [namespace]`.
fn may(policy: &Policy, who: &UserInfo, requests: &[&str]) -> Vec<bool> {
    requests
        .iter()
        .map(|r| {
            let parts: Vec<&str> = r.split(' ').collect();
            let attrs = request(parts[0], parts[1], parts.get(2).copied().unwrap_or(""));
            policy.authorize(who, &named(attrs, "x")).is_ok()
        })
        .collect()
}

fn bind(namespace: &str, role: &str, user: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{role}-{user}"), "namespace": namespace},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": user}]
    }))
    .unwrap()
}

#[test]
fn every_object_is_one_the_apiserver_admits() {
    let roles = cluster_roles().into_iter().map(|r| ("ClusterRole", serde_json::to_value(r).unwrap()));
    let bindings =
        cluster_role_bindings().into_iter().map(|b| ("ClusterRoleBinding", serde_json::to_value(b).unwrap()));
    for (kind, obj) in roles.chain(bindings) {
        let info = KindInfo::by_kind(kind).unwrap();
        let admitted = skiff_api::normalize(info, obj.clone(), 100).unwrap_or_else(|e| panic!("{obj}: {e}"));
        assert_eq!(admitted["metadata"]["labels"]["kubernetes.io/bootstrapping"], "rbac-defaults", "{obj}");
        assert_eq!(admitted["metadata"]["annotations"][AUTOUPDATE_ANNOTATION], "true", "{obj}");
    }
}

#[test]
fn every_binding_names_a_bootstrap_role() {
    let roles: Vec<String> = cluster_roles().into_iter().filter_map(|r| r.metadata.name).collect();
    for b in cluster_role_bindings() {
        assert!(roles.contains(&b.role_ref.name), "{:?}", b.metadata.name);
        assert_eq!(b.metadata.name.as_ref(), Some(&b.role_ref.name));
    }
}

#[test]
fn system_masters_hold_cluster_admin() {
    let policy = policy(Vec::new());
    let admin = UserInfo { groups: vec![MASTERS_GROUP.into()], ..user("admin") };
    assert_eq!(
        may(&policy, &admin, &["delete nodes", "get secrets kube-system", "create clusterrolebindings"]),
        [true; 3]
    );
    // Also through the role itself, not only the group's shortcut.
    let policy = Policy::build(Vec::new(), cluster_roles(), vec![bind("a", CLUSTER_ADMIN, "ann")], Vec::new());
    assert_eq!(may(&policy, &user("ann"), &["get secrets a", "create roles a", "get secrets b"]), [true, true, false]);
}

#[test]
fn the_scheduler_binds_pods_and_reads_nodes_but_no_secrets() {
    let policy = policy(Vec::new());
    let scheduler = user(SCHEDULER_USER);
    let allowed = [
        "create pods/binding a",
        "list pods",
        "watch pods",
        "get pods a",
        "list nodes",
        "watch nodes",
        "update pods/status a",
        "create events a",
        "patch events a",
    ];
    assert_eq!(may(&policy, &scheduler, &allowed), [true; 9]);
    let denied = [
        "get secrets a",
        "list secrets",
        "create pods a",
        "delete pods a",
        "update pods a",
        "update nodes",
        "delete nodes",
        "list configmaps",
    ];
    assert_eq!(may(&policy, &scheduler, &denied), [false; 8]);

    let lease = |verb, name| named(request(verb, "leases", "kube-system"), name);
    let can = |attrs| policy.authorize(&scheduler, &attrs).is_ok();
    assert!(can(lease("create", "")));
    assert!(can(lease("get", SCHEDULER_LEASE)) && can(lease("update", SCHEDULER_LEASE)));
    assert!(!can(lease("update", CONTROLLER_MANAGER_LEASE)), "another component's lease");
    assert!(!can(lease("delete", SCHEDULER_LEASE)));
}

#[test]
fn the_controller_manager_runs_workloads_but_binds_nothing() {
    let policy = policy(Vec::new());
    let cm = user(CONTROLLER_MANAGER_USER);
    let allowed = [
        "create pods a",
        "delete pods a",
        "patch pods a",
        "update pods/status a",
        "create replicasets a",
        "update replicasets a",
        "update replicasets/status a",
        "patch deployments a",
        "update deployments/status a",
        "update nodes",
        "update nodes/status",
        "patch nodes",
        "create endpoints a",
        "update namespaces/status",
        "list leases kube-node-lease",
        "delete secrets a",
        "list roles a",
        "delete rolebindings a",
    ];
    assert_eq!(may(&policy, &cm, &allowed), [true; 18]);
    let denied = [
        "create pods/binding a",
        "get secrets a",
        "update pods a",
        "update deployments a",
        "create deployments a",
        "delete nodes",
        "create secrets a",
        "update services a",
    ];
    assert_eq!(may(&policy, &cm, &denied), [false; 8]);
}

#[test]
fn nodes_run_their_pods() {
    let policy = policy(Vec::new());
    let kubelet = node_user("n1");
    let allowed = [
        "create nodes",
        "get nodes",
        "patch nodes",
        "update nodes/status",
        "watch pods",
        "delete pods a",
        "update pods/status a",
        "watch persistentvolumes",
        "create leases kube-node-lease",
        "patch leases kube-node-lease",
        "create events a",
        // skiff-overlay on a joined node acts as the node.
        "list services",
    ];
    assert_eq!(may(&policy, &kubelet, &allowed), [true; 12]);
    // Secrets, ConfigMaps and claims: only through the Node authorizer.
    let denied = [
        "create pods a",
        "create pods/binding a",
        "delete nodes",
        "update pods a",
        "get secrets a",
        "list secrets",
        "watch configmaps",
        "list persistentvolumeclaims",
        "create secrets a",
        "delete services a",
    ];
    assert_eq!(may(&policy, &kubelet, &denied), [false; 10]);
    let control = named(request("watch", "configmaps", "kube-system"), skiff_api::well_known::HOLLOW_CONTROL);
    assert!(policy.authorize(&kubelet, &control).is_ok(), "hollow nodes' failure injection, by name");
    assert!(policy.authorize(&user("system:node:n1"), &request("list", "pods", "")).is_err(), "only as a node");
}

#[test]
fn network_components_read_what_they_serve() {
    let policy = policy(Vec::new());
    let overlay = ["list nodes", "patch nodes", "watch services", "list endpoints", "create events default"];
    assert_eq!(may(&policy, &user(OVERLAY_USER), &overlay), [true; 5]);
    assert_eq!(may(&policy, &user(OVERLAY_USER), &["list secrets", "update nodes", "list pods"]), [false; 3]);

    let dns = ["list services", "watch endpoints", "list pods"];
    assert_eq!(may(&policy, &user(DNS_USER), &dns), [true; 3]);
    assert_eq!(may(&policy, &user(DNS_USER), &["list secrets", "list nodes", "create events a"]), [false; 3]);

    let ingress = [
        "list ingresses",
        "watch ingressclasses",
        "list secrets",
        "update ingresses/status a",
        "update services/status a",
        "list endpoints",
        "create events a",
    ];
    assert_eq!(may(&policy, &user(INGRESS_USER), &ingress), [true; 7]);
    let denied = ["update services a", "update ingresses a", "get secrets a", "list pods"];
    assert_eq!(may(&policy, &user(INGRESS_USER), &denied), [false; 4]);
}

#[test]
fn view_reads_everything_but_secrets() {
    let policy = policy(vec![bind("a", "view", "vic")]);
    let allowed = [
        "get pods a",
        "list deployments a",
        "watch services a",
        "get configmaps a",
        "list events a",
        "get pods/log a",
        "list horizontalpodautoscalers a",
        "get namespaces a",
    ];
    assert_eq!(may(&policy, &user("vic"), &allowed), [true; 8]);
    let denied = [
        "get secrets a",
        "list secrets a",
        "create pods a",
        "delete deployments a",
        "list roles a",
        "create pods/exec a",
        "get pods b",
    ];
    assert_eq!(may(&policy, &user("vic"), &denied), [false; 7]);
}

#[test]
fn edit_changes_workloads_but_not_access() {
    let policy = policy(vec![bind("a", "edit", "eve")]);
    let allowed = [
        "create deployments a",
        "delete pods a",
        "patch services a",
        "create secrets a",
        "get secrets a",
        "create pods/exec a",
        "get pods a",
        "update cronjobs a",
    ];
    assert_eq!(may(&policy, &user("eve"), &allowed), [true; 8]);
    let denied = [
        "create roles a",
        "create rolebindings a",
        "get rolebindings a",
        "update endpoints a",
        "update deployments/status a",
        "create leases a",
        "create pods/binding a",
    ];
    assert_eq!(may(&policy, &user("eve"), &denied), [false; 7]);
}

#[test]
fn a_role_binding_grants_only_in_its_namespace() {
    let policy = policy(vec![bind("a", "edit", "eve")]);
    let elsewhere = ["create deployments b", "get pods b", "list pods", "list nodes", "create namespaces"];
    assert_eq!(may(&policy, &user("eve"), &elsewhere), [false; 5]);
}

#[test]
fn admin_manages_access_in_its_namespace() {
    let policy = policy(vec![bind("a", "admin", "ada")]);
    let allowed =
        ["create roles a", "create rolebindings a", "delete roles a", "create deployments a", "get secrets a"];
    assert_eq!(may(&policy, &user("ada"), &allowed), [true; 5]);
    let denied = ["create roles b", "create clusterroles", "create clusterrolebindings", "delete namespaces a"];
    assert_eq!(may(&policy, &user("ada"), &denied), [false; 4]);
}
