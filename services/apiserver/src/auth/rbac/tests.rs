use serde_json::{json, Value};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn role(namespace: &str, name: &str, rules: Value) -> Role {
    from(json!({"metadata": {"name": name, "namespace": namespace}, "rules": rules}))
}

fn cluster_role(name: &str, labels: Value, rules: Value) -> ClusterRole {
    from(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
}

fn aggregated(name: &str, labels: Value, selector: Value) -> ClusterRole {
    from(json!({"metadata": {"name": name, "labels": labels},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": selector}]}}))
}

fn role_binding(namespace: &str, role_kind: &str, role: &str, subjects: Value) -> RoleBinding {
    from(json!({"metadata": {"name": format!("{role}-binding"), "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
                "subjects": subjects}))
}

fn cluster_role_binding(role: &str, subjects: Value) -> ClusterRoleBinding {
    from(json!({"metadata": {"name": format!("{role}-binding")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": subjects}))
}

fn user(name: &str) -> Value {
    json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}])
}

fn someone(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo { name: name.into(), uid: "uid-1".into(), groups: groups.iter().map(|g| g.to_string()).collect() }
}

/// A request for `verb` on `resource` (`pods`, `pods/status`) in the core group.
fn core<'a>(verb: &'a str, resource: &'a str, namespace: &'a str, name: &'a str) -> Attributes<'a> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    Attributes { verb, api_group: "", resource, subresource, namespace, name }
}

fn allowed(policy: &Policy, who: &UserInfo, attrs: Attributes) -> bool {
    policy.authorize(who, &attrs).is_ok()
}

fn pod_reader() -> ClusterRole {
    cluster_role("pod-reader", json!({}), json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]))
}

#[test]
fn denies_by_default_in_kubernetes_words() {
    let policy = Policy::default();
    let alice = someone("alice", &["system:authenticated"]);
    assert_eq!(
        policy.authorize(&alice, &core("list", "secrets", "default", "")),
        Err(r#"User "alice" cannot list resource "secrets" in API group "" in the namespace "default""#.into())
    );
    let nodes = core("get", "nodes", "", "n1");
    assert_eq!(
        policy.authorize(&alice, &nodes),
        Err(r#"User "alice" cannot get resource "nodes" in API group "" at the cluster scope"#.into())
    );
    let status = Attributes { api_group: "apps", ..core("update", "deployments/status", "web", "api") };
    assert_eq!(
        policy.authorize(&alice, &status),
        Err(r#"User "alice" cannot update resource "deployments/status" in API group "apps" in the namespace "web""#
            .into())
    );
}

#[test]
fn system_masters_may_do_anything() {
    let policy = Policy::default();
    let admin = someone("admin", &["system:masters"]);
    assert!(allowed(&policy, &admin, core("delete", "nodes", "", "n1")));
    assert!(allowed(&policy, &admin, core("get", "secrets", "kube-system", "token")));
    assert!(!allowed(&policy, &someone("system:masters", &[]), core("get", "pods", "default", "p")));
}

#[test]
fn cluster_role_bindings_grant_everywhere() {
    let policy =
        Policy::build(vec![], vec![pod_reader()], vec![], vec![cluster_role_binding("pod-reader", user("alice"))]);
    let alice = someone("alice", &[]);
    assert!(allowed(&policy, &alice, core("get", "pods", "a", "p")));
    assert!(allowed(&policy, &alice, core("list", "pods", "b", "")));
    assert!(allowed(&policy, &alice, core("list", "pods", "", "")), "across all namespaces");
    assert!(!allowed(&policy, &alice, core("delete", "pods", "a", "p")), "verb not granted");
    assert!(!allowed(&policy, &alice, core("get", "services", "a", "s")), "resource not granted");
    assert!(!allowed(&policy, &someone("bob", &[]), core("get", "pods", "a", "p")), "not a subject");
}

#[test]
fn role_bindings_grant_only_in_their_namespace() {
    let roles = vec![role("a", "reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]))];
    let bindings = vec![
        role_binding("a", "ClusterRole", "pod-reader", user("alice")),
        role_binding("a", "Role", "reader", user("alice")),
        // A Role is looked up in the binding's namespace: b has no "reader".
        role_binding("b", "Role", "reader", user("alice")),
    ];
    let policy = Policy::build(roles, vec![pod_reader()], bindings, vec![]);
    let alice = someone("alice", &[]);
    assert!(allowed(&policy, &alice, core("get", "pods", "a", "p")));
    assert!(allowed(&policy, &alice, core("get", "configmaps", "a", "c")));
    assert!(!allowed(&policy, &alice, core("get", "pods", "b", "p")));
    assert!(!allowed(&policy, &alice, core("get", "configmaps", "b", "c")));
    assert!(!allowed(&policy, &alice, core("list", "pods", "", "")), "not across all namespaces");
}

#[test]
fn a_binding_to_a_missing_role_grants_nothing() {
    let bindings = vec![role_binding("a", "Role", "absent", user("alice"))];
    let cluster_bindings = vec![cluster_role_binding("absent", user("alice"))];
    let policy = Policy::build(vec![], vec![], bindings, cluster_bindings);
    assert!(!allowed(&policy, &someone("alice", &[]), core("get", "pods", "a", "p")));
}

#[test]
fn subjects_match_users_groups_and_service_accounts() {
    let subjects = json!([
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"},
        {"kind": "ServiceAccount", "name": "builder"},
        {"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}
    ]);
    let policy = Policy::build(
        vec![],
        vec![pod_reader()],
        vec![role_binding("a", "ClusterRole", "pod-reader", subjects)],
        vec![],
    );
    let get = core("get", "pods", "a", "p");
    assert!(allowed(&policy, &someone("carol", &["devs"]), get));
    assert!(!allowed(&policy, &someone("devs", &[]), get), "a group is not a user");
    assert!(
        allowed(&policy, &someone("system:serviceaccount:a:builder", &[]), get),
        "namespace defaults to the binding's"
    );
    assert!(!allowed(&policy, &someone("system:serviceaccount:b:builder", &[]), get));
    assert!(allowed(&policy, &someone("system:serviceaccount:ci:deployer", &[]), get));
    assert!(!allowed(&policy, &someone("deployer", &[]), get));

    // In a ClusterRoleBinding a ServiceAccount must name its namespace.
    let loose = json!([{"kind": "ServiceAccount", "name": "builder"}]);
    let policy = Policy::build(vec![], vec![pod_reader()], vec![], vec![cluster_role_binding("pod-reader", loose)]);
    assert!(!allowed(&policy, &someone("system:serviceaccount::builder", &[]), get));
}

#[test]
fn verbs_and_api_groups_match_exactly_or_by_wildcard() {
    let roles = vec![
        cluster_role(
            "apps-all",
            json!({}),
            json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}]),
        ),
        cluster_role(
            "any-group",
            json!({}),
            json!([{"apiGroups": ["*"], "resources": ["ingresses"], "verbs": ["list"]}]),
        ),
    ];
    let bindings =
        vec![cluster_role_binding("apps-all", user("alice")), cluster_role_binding("any-group", user("alice"))];
    let policy = Policy::build(vec![], roles, vec![], bindings);
    let alice = someone("alice", &[]);
    let apps =
        |verb| Attributes { verb, api_group: "apps", resource: "deployments", namespace: "a", ..Default::default() };
    assert!(allowed(&policy, &alice, apps("create")));
    assert!(allowed(&policy, &alice, apps("delete")));
    assert!(!allowed(&policy, &alice, Attributes { api_group: "", ..apps("get") }), "core is not apps");
    let ingresses = |group| Attributes { verb: "list", api_group: group, resource: "ingresses", ..Default::default() };
    assert!(allowed(&policy, &alice, ingresses("networking.k8s.io")));
    assert!(allowed(&policy, &alice, ingresses("extensions")));
    assert!(allowed(&policy, &alice, ingresses("")));
}

#[test]
fn resources_match_subresources_as_written() {
    let rule = |resources: Value| json!([{"apiGroups": [""], "resources": resources, "verbs": ["*"]}]);
    let case = |resources: Value, request: &str| {
        let roles = vec![cluster_role("r", json!({}), rule(resources))];
        let policy = Policy::build(vec![], roles, vec![], vec![cluster_role_binding("r", user("u"))]);
        allowed(&policy, &someone("u", &[]), core("get", request, "a", "x"))
    };
    assert!(case(json!(["pods"]), "pods"));
    assert!(!case(json!(["pods"]), "pods/log"), "a resource does not grant its subresources");
    assert!(case(json!(["pods/log"]), "pods/log"));
    assert!(!case(json!(["pods/log"]), "pods"));
    assert!(!case(json!(["pods/log"]), "pods/exec"));
    assert!(case(json!(["pods/*"]), "pods/exec"));
    assert!(!case(json!(["pods/*"]), "pods"), "pods/* is the subresources only");
    assert!(!case(json!(["pods/*"]), "nodes/status"));
    assert!(case(json!(["*/scale"]), "deployments/scale"));
    assert!(!case(json!(["*/scale"]), "deployments"));
    assert!(!case(json!(["*/scale"]), "deployments/status"));
    assert!(case(json!(["*"]), "secrets"));
    assert!(case(json!(["*"]), "pods/status"));
}

#[test]
fn resource_names_need_a_named_request() {
    let rules = json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["skiff-scheduler"],
                        "verbs": ["get", "update", "create", "list"]}]);
    let policy = Policy::build(
        vec![],
        vec![cluster_role("lease", json!({}), rules)],
        vec![],
        vec![cluster_role_binding("lease", user("s"))],
    );
    let lease = |verb, name| Attributes {
        verb,
        api_group: "coordination.k8s.io",
        resource: "leases",
        namespace: "kube-system",
        name,
        ..Default::default()
    };
    let s = someone("s", &[]);
    assert!(allowed(&policy, &s, lease("get", "skiff-scheduler")));
    assert!(allowed(&policy, &s, lease("update", "skiff-scheduler")));
    assert!(!allowed(&policy, &s, lease("update", "other")));
    assert!(!allowed(&policy, &s, lease("create", "")), "create names no object");
    assert!(!allowed(&policy, &s, lease("list", "")));
}

#[test]
fn non_resource_rules_grant_no_resources() {
    let roles = vec![cluster_role("health", json!({}), json!([{"nonResourceURLs": ["*"], "verbs": ["*"]}]))];
    let policy = Policy::build(vec![], roles, vec![], vec![cluster_role_binding("health", user("u"))]);
    assert!(!allowed(&policy, &someone("u", &[]), core("get", "pods", "a", "p")));
}

#[test]
fn aggregated_cluster_roles_take_the_rules_of_the_roles_they_select() {
    let label = |key: &str| json!({ format!("rbac.authorization.k8s.io/{key}"): "true" });
    let roles = vec![
        aggregated("admin", json!({}), label("aggregate-to-admin")),
        aggregated("edit", label("aggregate-to-admin"), label("aggregate-to-edit")),
        aggregated("view", label("aggregate-to-edit"), label("aggregate-to-view")),
        cluster_role(
            "pods-view",
            label("aggregate-to-view"),
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        ),
        cluster_role(
            "pods-edit",
            label("aggregate-to-edit"),
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]),
        ),
        cluster_role(
            "roles-admin",
            label("aggregate-to-admin"),
            json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create"]}]),
        ),
    ];
    let bindings = ["admin", "edit", "view"].map(|r| role_binding("a", "ClusterRole", r, user(r))).to_vec();
    let policy = Policy::build(vec![], roles, bindings, vec![]);
    let create_role = Attributes { api_group: "rbac.authorization.k8s.io", ..core("create", "roles", "a", "") };
    let can = |who: &str, attrs| allowed(&policy, &someone(who, &[]), attrs);
    assert!(can("view", core("get", "pods", "a", "p")));
    assert!(!can("view", core("delete", "pods", "a", "p")));
    assert!(can("edit", core("get", "pods", "a", "p")), "edit takes view's rules");
    assert!(can("edit", core("delete", "pods", "a", "p")));
    assert!(!can("edit", create_role));
    assert!(can("admin", core("get", "pods", "a", "p")), "admin takes edit's, which took view's");
    assert!(can("admin", core("delete", "pods", "a", "p")));
    assert!(can("admin", create_role));
}

#[test]
fn aggregation_replaces_own_rules_and_survives_cycles() {
    let label = |v: &str| json!({ "agg": v });
    let roles = vec![
        // Its own rules are what a past aggregation wrote; they don't count.
        from(json!({"metadata": {"name": "a", "labels": {"agg": "b"}},
                    "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "a"}}]},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]})),
        aggregated("b", label("a"), label("b")),
        cluster_role("leaf", label("a"), json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])),
    ];
    let policy = Policy::build(vec![], roles, vec![], vec![cluster_role_binding("a", user("u"))]);
    let u = someone("u", &[]);
    assert!(allowed(&policy, &u, core("get", "pods", "x", "p")));
    assert!(!allowed(&policy, &u, core("get", "secrets", "x", "s")));
}

#[test]
fn bindings_are_indexed_by_subject() {
    let bindings =
        (0..100).map(|i| role_binding(&format!("ns-{i}"), "ClusterRole", "pod-reader", user(&format!("user-{i}"))));
    let policy = Policy::build(vec![], vec![pod_reader()], bindings.collect(), vec![]);
    assert_eq!(policy.users.len(), 100);
    let grants = &policy.users["user-7"];
    assert!(grants.everywhere.is_empty());
    assert_eq!(grants.in_namespace.keys().collect::<Vec<_>>(), ["ns-7"]);
    assert!(allowed(&policy, &someone("user-7", &[]), core("get", "pods", "ns-7", "p")));
    assert!(!allowed(&policy, &someone("user-7", &[]), core("get", "pods", "ns-8", "p")));

    // Two bindings of one role to one subject keep one copy of its rules.
    let twice = vec![cluster_role_binding("pod-reader", user("u")), cluster_role_binding("pod-reader", user("u"))];
    let policy = Policy::build(vec![], vec![pod_reader()], vec![], twice);
    assert_eq!(policy.users["u"].everywhere.len(), 1);
}

// === escalation: what a user's rules cover ===

fn rules(v: Value) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    from(v)
}

/// `lead` holds `held` in namespace `team` through a RoleBinding, and
/// reading nodes cluster-wide through a ClusterRoleBinding.
fn lead_policy(held: Value) -> Policy {
    Policy::build(
        vec![role("team", "lead", held)],
        vec![cluster_role(
            "node-reader",
            json!({}),
            json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
        )],
        vec![role_binding("team", "Role", "lead", user("lead"))],
        vec![cluster_role_binding("node-reader", user("lead"))],
    )
}

#[test]
fn a_user_covers_what_it_holds_where_it_holds_it() {
    let policy = lead_policy(json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]));
    let lead = someone("lead", &[]);
    let pods = rules(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]));
    assert!(policy.covers(&lead, "team", &pods).is_ok());
    assert!(policy.covers(&lead, "other", &pods).is_err(), "held only in team");
    assert!(policy.covers(&lead, "", &pods).is_err(), "not cluster-wide");
    let nodes = rules(json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]));
    assert!(policy.covers(&lead, "", &nodes).is_ok(), "ClusterRoleBindings count everywhere");
    assert!(policy.covers(&lead, "team", &nodes).is_ok());
    let more = rules(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "delete"]}]));
    let missing = policy.covers(&lead, "team", &more).unwrap_err();
    assert!(missing.contains("delete pods"), "{missing}");
}

#[test]
fn a_wildcard_is_covered_only_by_a_wildcard() {
    let policy =
        lead_policy(json!([{"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list", "watch"]}]));
    let lead = someone("lead", &[]);
    for wanted in [
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]),
        json!([{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}]),
        json!([{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]),
        json!([{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]),
    ] {
        assert!(policy.covers(&lead, "team", &rules(wanted.clone())).is_err(), "{wanted}");
    }
    let admin = lead_policy(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]));
    for wanted in [
        json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        json!([{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]}]),
    ] {
        assert!(admin.covers(&lead, "team", &rules(wanted.clone())).is_ok(), "{wanted}");
    }
}

#[test]
fn subresource_wildcards_and_names_cover_what_they_name() {
    let policy = lead_policy(json!([
        {"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"], "resourceNames": ["settings"]},
    ]));
    let lead = someone("lead", &[]);
    let covers = |v: Value| policy.covers(&lead, "team", &rules(v)).is_ok();
    assert!(covers(json!([{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}])));
    assert!(covers(json!([{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}])));
    assert!(!covers(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])), "pods/* is not pods");
    assert!(covers(
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"], "resourceNames": ["settings"]}])
    ));
    assert!(!covers(
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"], "resourceNames": ["other"]}])
    ));
    assert!(!covers(json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"]}])), "any name");
}

#[test]
fn masters_cover_everything_and_a_missing_role_nothing() {
    let policy = lead_policy(json!([]));
    let root = someone("root", &["system:masters"]);
    let all = rules(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]));
    assert!(policy.covers(&root, "", &all).is_ok());
    assert!(policy.covers_role(&root, "team", "Role", "lead").is_ok());
    let lead = someone("lead", &[]);
    assert!(policy.covers_role(&lead, "team", "Role", "lead").is_ok(), "an empty role is covered");
    assert!(policy.covers_role(&lead, "", "ClusterRole", "node-reader").is_ok());
    let missing = policy.covers_role(&lead, "team", "Role", "ghost").unwrap_err();
    assert!(missing.contains("not found"), "{missing}");
}
