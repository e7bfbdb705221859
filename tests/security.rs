//! Who may use the API: TLS with the cluster CA, callers known by client
//! certificate or bearer token, RBAC deciding what each may do, and the
//! components' own least-privilege roles.

use std::path::Path;

use futures::StreamExt;
use serde_json::{json, Value};
use skiff_client::{Client, ClientConfig};
use skiff_testkit::{eventually, Cluster, ClusterOptions, Identity};
use tonic::Code;

#[path = "support/tls.rs"]
mod tls;

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}})
}

/// A client presenting a certificate the cluster CA signed for `user`.
fn client_as(cluster: &Cluster, file: &str, user: &str, groups: &[&str]) -> Client {
    let pki = cluster.pki().expect("a secure cluster");
    let (_, config) = pki.client_config(file, Identity { user, groups }).unwrap();
    Client::connect(&config).unwrap()
}

fn code<T: std::fmt::Debug>(result: Result<T, skiff_client::Error>) -> Code {
    result.expect_err("the call must be refused").code().expect("an API status")
}

#[tokio::test]
async fn no_client_without_credentials_gets_anything() {
    let cluster = Cluster::start().await.expect("cluster");
    cluster.client().create("ConfigMap", "default", &configmap("held")).await.unwrap();
    let ca = cluster.pki().unwrap().ca_file();

    // TLS to the right server, but nothing that says who is calling.
    let anonymous =
        ClientConfig { server: cluster.server(), certificate_authority: Some(ca.clone()), ..ClientConfig::default() };
    let anonymous = Client::connect(&anonymous).unwrap();
    assert_eq!(code(anonymous.get("ConfigMap", "default", "held").await), Code::Unauthenticated);
    assert_eq!(code(anonymous.list("ConfigMap", "default", &Default::default()).await), Code::Unauthenticated);
    assert_eq!(code(anonymous.create("ConfigMap", "default", &configmap("sneaky")).await), Code::Unauthenticated);
    let watch = anonymous.watch("ConfigMap", "default", &Default::default(), "").await;
    assert_eq!(watch.err().and_then(|e| e.code()), Some(Code::Unauthenticated));

    // A token nobody issued.
    let forged = ClientConfig { token: Some("not-a-token".into()), ..ClientConfig::insecure(cluster.server()) };
    let forged = Client::connect(&ClientConfig { certificate_authority: Some(ca.clone()), ..forged }).unwrap();
    let status = forged.get("ConfigMap", "default", "held").await.unwrap_err();
    assert_eq!(status.code(), Some(Code::Unauthenticated), "{status}");
    assert!(status.to_string().contains("invalid bearer token"), "{status}");

    // A certificate from another CA never gets past the handshake.
    let other = tempfile::tempdir().unwrap();
    let foreign = skiff_testkit::ClusterPki::open(other.path(), &cluster.server(), &["127.0.0.1".into()]).unwrap();
    let (_, mut foreign) = foreign.client_config("intruder", skiff_testkit::ADMIN).unwrap();
    foreign.certificate_authority = Some(ca.clone());
    let foreign = Client::connect(&foreign).unwrap();
    assert!(foreign.get("ConfigMap", "default", "held").await.is_err(), "a foreign CA's admin is refused");

    // Plain HTTP/2 to the TLS port gets no answer either.
    let plain = Client::new(&cluster.server().replace("https://", "http://")).unwrap();
    assert!(plain.get("ConfigMap", "default", "held").await.is_err());

    // Nothing of it was stored.
    assert!(cluster.client().get("ConfigMap", "default", "sneaky").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_user_can_do_exactly_what_its_role_allows() {
    let cluster = Cluster::start().await.expect("cluster");
    let admin = cluster.client();
    for ns in ["team-a", "team-b"] {
        admin.create("Namespace", "", &json!({"metadata": {"name": ns}})).await.unwrap();
        admin.create("ConfigMap", ns, &configmap("settings")).await.unwrap();
        let secret = json!({"metadata": {"name": "token"}, "stringData": {"t": "s3cret"}});
        admin.create("Secret", ns, &secret).await.unwrap();
    }
    let alice = client_as(&cluster, "alice", "alice", &["dev"]);

    // Deny by default, with the verb, resource and namespace named.
    let denied = alice.list("ConfigMap", "team-a", &Default::default()).await.unwrap_err();
    assert_eq!(denied.code(), Some(Code::PermissionDenied), "{denied}");
    let message = denied.to_string();
    for part in ["\"alice\"", "list", "\"configmaps\"", "\"team-a\""] {
        assert!(message.contains(part), "{message} names {part}");
    }

    // view in team-a, through her group.
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dev-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "dev", "apiGroup": "rbac.authorization.k8s.io"}],
    });
    admin.create("RoleBinding", "team-a", &binding).await.unwrap();
    eventually("alice may list ConfigMaps in team-a", || async {
        alice.list("ConfigMap", "team-a", &Default::default()).await.ok()
    })
    .await;
    alice.get("ConfigMap", "team-a", "settings").await.unwrap();
    assert_eq!(code(alice.get("Secret", "team-a", "token").await), Code::PermissionDenied, "view reads no Secrets");
    assert_eq!(code(alice.create("ConfigMap", "team-a", &configmap("mine")).await), Code::PermissionDenied);
    assert_eq!(code(alice.list("ConfigMap", "team-b", &Default::default()).await), Code::PermissionDenied);
    assert_eq!(code(alice.list("ConfigMap", "", &Default::default()).await), Code::PermissionDenied, "all namespaces");
    assert_eq!(code(alice.list("Node", "", &Default::default()).await), Code::PermissionDenied);

    // A Role of her own in team-b: ConfigMaps by name only.
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "settings-editor"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"],
                   "verbs": ["get", "update", "patch"]}],
    });
    admin.create("Role", "team-b", &role).await.unwrap();
    let mut bind_role = binding.clone();
    bind_role["metadata"]["name"] = "alice-settings".into();
    bind_role["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "settings-editor"});
    bind_role["subjects"] = json!([{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]);
    admin.create("RoleBinding", "team-b", &bind_role).await.unwrap();
    eventually("alice may patch team-b's settings", || async {
        alice.patch("ConfigMap", "team-b", "settings", &json!({"data": {"a": "2"}})).await.ok()
    })
    .await;
    assert_eq!(code(alice.get("Secret", "team-b", "token").await), Code::PermissionDenied);
    assert_eq!(code(alice.list("ConfigMap", "team-b", &Default::default()).await), Code::PermissionDenied);

    // Taking the binding away takes the right away.
    admin.delete("RoleBinding", "team-a", "dev-view").await.unwrap();
    eventually("alice loses team-a", || async {
        let refused = alice.get("ConfigMap", "team-a", "settings").await.err()?;
        (refused.code() == Some(Code::PermissionDenied)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn components_run_with_least_privilege() {
    let cluster = Cluster::start().await.expect("cluster");
    let admin = cluster.client();
    admin.create("Secret", "default", &json!({"metadata": {"name": "db"}, "stringData": {"p": "x"}})).await.unwrap();
    let scheduler = client_as(&cluster, "sched-probe", "system:kube-scheduler", &[]);
    scheduler.list("Node", "", &Default::default()).await.expect("the scheduler reads nodes");
    scheduler.list("Pod", "", &Default::default()).await.expect("the scheduler reads pods");
    assert_eq!(code(scheduler.get("Secret", "default", "db").await), Code::PermissionDenied);
    assert_eq!(code(scheduler.delete("Pod", "default", "any").await), Code::PermissionDenied);
    let dns = client_as(&cluster, "dns-probe", "system:skiff-dns", &[]);
    dns.list("Service", "", &Default::default()).await.expect("DNS reads services");
    assert_eq!(code(dns.create("ConfigMap", "default", &configmap("x")).await), Code::PermissionDenied);
    assert_eq!(code(dns.list("Secret", "", &Default::default()).await), Code::PermissionDenied);
}

#[tokio::test]
async fn bearer_tokens_from_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "t0ken-bob,bob,1001,\"system:masters\"\nt0ken-eve,eve,1002\n").unwrap();
    let options = ClusterOptions {
        apiserver_args: vec![format!("--token-auth-file={}", tokens.display())],
        ..Default::default()
    };
    let cluster = Cluster::start_with(options).await.expect("cluster");
    let as_token = |token: &str, ca: &Path| {
        let config = ClientConfig {
            server: cluster.server(),
            certificate_authority: Some(ca.to_path_buf()),
            token: Some(token.into()),
            ..ClientConfig::default()
        };
        Client::connect(&config).unwrap()
    };
    let ca = cluster.pki().unwrap().ca_file();
    let bob = as_token("t0ken-bob", &ca);
    bob.create("ConfigMap", "default", &configmap("bobs")).await.expect("bob is in system:masters");
    let eve = as_token("t0ken-eve", &ca);
    let denied = eve.get("ConfigMap", "default", "bobs").await.unwrap_err();
    assert_eq!(denied.code(), Some(Code::PermissionDenied), "eve is known but has no role: {denied}");
    assert!(denied.to_string().contains("\"eve\""), "{denied}");
}

#[tokio::test]
async fn skiffctl_auth_can_i_answers_for_the_caller_and_for_others() {
    let cluster = Cluster::start().await.expect("cluster");
    let can_i = |args: &[&str]| {
        let out = cluster.skiffctl(&[&["auth", "can-i"], args].concat(), None).unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // The admin may do anything.
    assert_eq!(can_i(&["delete", "nodes"]).0, Some(0));
    assert_eq!(can_i(&["get", "secrets", "-n", "kube-system"]).1, "yes");
    // The scheduler: bind pods, never read Secrets.
    let sched = ["--as", "system:kube-scheduler"];
    assert_eq!(can_i(&[&["create", "pods", "--subresource", "binding"], &sched[..]].concat()).1, "yes");
    let (code, answer, why) = can_i(&[&["get", "secrets", "-v"], &sched[..]].concat());
    assert_eq!((code, answer.as_str()), (Some(1), "no"), "kubectl's exit status for no");
    assert!(why.contains("system:kube-scheduler") && why.contains("secrets"), "{why}");
    // Groups count: a member of system:masters may.
    assert_eq!(can_i(&["delete", "nodes", "--as", "carol", "--as-group", "system:masters"]).1, "yes");
    assert_eq!(can_i(&["delete", "nodes", "--as", "carol"]).1, "no");
    // Unknown kinds are named.
    let (code, _, err) = can_i(&["get", "gizmos"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("gizmos"), "{err}");

    // Asking about others needs the right to: alice may only ask about herself.
    let alice = client_as(&cluster, "alice-review", "alice", &["dev"]);
    let review = |user: &str| skiff_api::proto::AccessReviewRequest {
        verb: "list".into(),
        kind: "Pod".into(),
        namespace: "default".into(),
        user: user.into(),
        ..Default::default()
    };
    let own = alice.objects().review_access(review("")).await.unwrap().into_inner();
    assert!(!own.allowed && own.reason.contains("\"alice\""), "{own:?}");
    let other = alice.objects().review_access(review("system:kube-scheduler")).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
}

/// The certificate the apiserver presents to a new connection now (PEM
/// decoded to DER), trusting the cluster CA.
async fn served_certificate(cluster: &Cluster) -> Vec<u8> {
    let addr = cluster.server().trim_start_matches("https://").to_string();
    let host = addr.rsplit_once(':').unwrap().0.to_string();
    let ca = std::fs::read(cluster.pki().unwrap().ca_file()).unwrap();
    let tls = tls::connect(&addr, &host, &ca).await.expect("the served certificate is valid for the CA");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_renewed_serving_certificate_is_served_without_dropping_watches() {
    use futures::StreamExt;
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    let before = served_certificate(&cluster).await;
    let mut watch = client.watch("ConfigMap", "default", &Default::default(), "").await.unwrap().boxed();

    let renewed = cluster.pki().unwrap().renew_serving().unwrap();
    let renewed = skiff_pki::pem_certificates(&renewed).unwrap().remove(0);
    assert_ne!(before, renewed);
    eventually("new connections get the renewed certificate", || async {
        (served_certificate(&cluster).await == renewed).then_some(())
    })
    .await;

    // The watch opened before the renewal goes on over its connection.
    client.create("ConfigMap", "default", &configmap("after-renewal")).await.unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(event) = watch.next().await {
            if let skiff_client::WatchEvent::Added(o) = event.expect("the watch carries on") {
                if o["metadata"]["name"] == "after-renewal" {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch saw the create made after the renewal");
    // And clients connecting afresh trust it.
    cluster.client().get("ConfigMap", "default", "after-renewal").await.unwrap();
}

#[tokio::test]
async fn a_node_may_change_only_itself_and_the_pods_bound_to_it() {
    let cluster = Cluster::start().await.expect("cluster");
    let admin = cluster.client();
    for node in ["node-a", "node-b"] {
        admin.create("Node", "", &json!({"metadata": {"name": node}})).await.unwrap();
        let pod = json!({"metadata": {"name": format!("on-{node}")},
                         "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}});
        admin.create("Pod", "default", &pod).await.unwrap();
    }
    let node_a = client_as(&cluster, "node-a-probe", "system:node:node-a", &["system:nodes"]);
    let label = |v: &str| json!({"metadata": {"labels": {"probe": v}}});

    node_a.patch("Node", "", "node-a", &label("mine")).await.expect("a node changes itself");
    let denied = node_a.patch("Node", "", "node-b", &label("theirs")).await.unwrap_err();
    assert_eq!(denied.code(), Some(Code::PermissionDenied), "{denied}");
    assert!(denied.to_string().contains("\"node-a\" is not allowed to modify node \"node-b\""), "{denied}");
    assert_eq!(code(node_a.delete("Node", "", "node-b").await), Code::PermissionDenied);

    let mut own = admin.get("Pod", "default", "on-node-a").await.unwrap();
    own["status"] = json!({"phase": "Running"});
    node_a.update_status("Pod", "default", &own).await.expect("its own pod's status");
    let mut theirs = admin.get("Pod", "default", "on-node-b").await.unwrap();
    theirs["status"] = json!({"phase": "Failed"});
    assert_eq!(code(node_a.update_status("Pod", "default", &theirs).await), Code::PermissionDenied);
    assert_eq!(code(node_a.delete("Pod", "default", "on-node-b").await), Code::PermissionDenied);
    let pod = json!({"metadata": {"name": "smuggled"},
                     "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(code(node_a.create("Pod", "default", &pod).await), Code::PermissionDenied);

    // Nothing of it happened.
    let b = admin.get("Node", "", "node-b").await.unwrap();
    assert!(b["metadata"]["labels"]["probe"].is_null(), "{b}");
    assert_ne!(admin.get("Pod", "default", "on-node-b").await.unwrap()["status"]["phase"], "Failed");
}

/// The Node authorizer: a kubelet reads a Secret, ConfigMap or claim only
/// when a pod bound to its node names it, and only by name (a get, or a
/// list or watch of `metadata.name=NAME`), as Kubernetes' `Node` mode.
#[tokio::test]
async fn a_node_reads_only_the_secrets_and_config_maps_its_pods_use() {
    let cluster = Cluster::start().await.expect("cluster");
    let admin = cluster.client();
    for name in ["used", "unused"] {
        admin.create("Secret", "default", &json!({"metadata": {"name": name}, "data": {"k": "dg=="}})).await.unwrap();
        admin.create("ConfigMap", "default", &json!({"metadata": {"name": name}, "data": {"k": "v"}})).await.unwrap();
    }
    // No Node objects: a pod of a node that does not exist is deleted at
    // once, with no kubelet to wait for.
    let pod = json!({"metadata": {"name": "user"}, "spec": {
        "nodeName": "node-a",
        "volumes": [{"name": "conf", "configMap": {"name": "used"}}],
        "containers": [{"name": "c", "image": "busybox",
                        "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "used", "key": "k"}}}]}]}});
    admin.create("Pod", "default", &pod).await.unwrap();
    let node_a = client_as(&cluster, "node-a-reader", "system:node:node-a", &["system:nodes"]);
    let node_b = client_as(&cluster, "node-b-reader", "system:node:node-b", &["system:nodes"]);

    node_a.get("Secret", "default", "used").await.expect("its pod's Secret");
    node_a.get("ConfigMap", "default", "used").await.expect("its pod's ConfigMap");
    let one = skiff_client::ListParams::default().fields("metadata.name=used");
    assert_eq!(node_a.list("Secret", "default", &one).await.expect("a list of that one").items.len(), 1);
    let mut watch = Box::pin(node_a.watch("Secret", "default", &one, "").await.expect("a watch of that one"));
    admin.patch("Secret", "default", "used", &json!({"metadata": {"labels": {"changed": "yes"}}})).await.unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next()).await;
    let Ok(Some(Ok(skiff_client::WatchEvent::Modified(secret)))) = seen else { panic!("no change seen: {seen:?}") };
    assert_eq!(secret["metadata"]["labels"]["changed"], "yes");
    assert_eq!(code(node_a.get("Secret", "default", "unused").await), Code::PermissionDenied);
    assert_eq!(code(node_a.get("ConfigMap", "default", "unused").await), Code::PermissionDenied);
    let all = skiff_client::ListParams::default();
    assert_eq!(code(node_a.list("Secret", "default", &all).await), Code::PermissionDenied, "never the whole kind");
    let other = skiff_client::ListParams::default().fields("metadata.name=unused");
    assert_eq!(code(node_a.list("Secret", "default", &other).await), Code::PermissionDenied);
    assert_eq!(code(node_b.get("Secret", "default", "used").await), Code::PermissionDenied, "not its pod");

    // Once the pod has gone, so has the node's reason to read it.
    admin.delete_with_grace("Pod", "default", "user", Some(0)).await.unwrap();
    eventually("the pod gone", || async { admin.get("Pod", "default", "user").await.is_err().then_some(()) }).await;
    assert_eq!(code(node_a.get("Secret", "default", "used").await), Code::PermissionDenied);
}

#[tokio::test]
async fn every_namespace_comes_with_a_default_service_account() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    for ns in ["default", "kube-system"] {
        client.get("ServiceAccount", ns, "default").await.unwrap_or_else(|e| panic!("{ns}: {e}"));
    }
    client.create("Namespace", "", &json!({"metadata": {"name": "fresh"}})).await.unwrap();
    let account = client.get("ServiceAccount", "fresh", "default").await.expect("made with the namespace");
    let first_uid = account["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    assert!(!first_uid.is_empty());

    // Deleted, it comes back (a new object), as Kubernetes'
    // serviceaccounts controller brings it back.
    client.delete("ServiceAccount", "fresh", "default").await.unwrap();
    eventually("the default ServiceAccount made again", || async {
        let again = client.get("ServiceAccount", "fresh", "default").await.ok()?;
        (again["metadata"]["uid"] != first_uid.as_str()).then_some(())
    })
    .await;
}

/// RBAC's escalation prevention: a user who may write Roles and bindings
/// in a namespace grants only what it holds there, unless it may
/// `escalate` or `bind`.
#[tokio::test]
async fn writing_rbac_objects_grants_no_more_than_the_writer_holds() {
    let cluster = Cluster::start().await.expect("cluster");
    let admin = cluster.client();
    admin.create("Namespace", "", &json!({"metadata": {"name": "team"}})).await.unwrap();
    let role = |name: &str, rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name}, "rules": rules})
    };
    let binding = |name: &str, kind: &str, role: &str, user: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})
    };
    // The lead may manage RBAC in the namespace and read pods there. (Not
    // `*` verbs on roles: those include escalate and bind.)
    let lead_rules = json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
         "verbs": ["get", "list", "create", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    ]);
    admin.create("Role", "team", &role("lead", lead_rules)).await.unwrap();
    admin.create("RoleBinding", "team", &binding("lead", "Role", "lead", "lead")).await.unwrap();
    let lead = client_as(&cluster, "lead", "lead", &[]);

    // What the lead holds, it may hand on.
    let reader = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]);
    eventually("the lead's binding to reach the policy", || async {
        lead.create("Role", "team", &role("pod-reader", reader.clone())).await.ok()
    })
    .await;
    eventually("the new role to reach the policy", || async {
        lead.create("RoleBinding", "team", &binding("dev-reads", "Role", "pod-reader", "dev")).await.ok()
    })
    .await;

    // More than it holds, it may not: by a new role, by growing a role it
    // may edit, or by binding a bigger role.
    let secrets = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]);
    let refused = lead.create("Role", "team", &role("secret-reader", secrets.clone())).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    assert!(refused.to_string().contains("get secrets"), "names what is missing: {refused}");
    let grown = lead.patch("Role", "team", "pod-reader", &json!({"rules": secrets})).await.unwrap_err();
    assert_eq!(grown.code(), Some(Code::PermissionDenied), "{grown}");
    for (kind, name) in [("ClusterRole", "admin"), ("ClusterRole", "cluster-admin")] {
        let bound = lead.create("RoleBinding", "team", &binding("take-over", kind, name, "lead")).await.unwrap_err();
        assert_eq!(bound.code(), Some(Code::PermissionDenied), "binding {name}: {bound}");
    }
    let missing = lead.create("RoleBinding", "team", &binding("ghost", "Role", "no-such-role", "dev")).await;
    assert_eq!(code(missing), Code::PermissionDenied);
    // Nothing refused was stored, and the role kept its rules.
    assert!(admin.get("Role", "team", "secret-reader").await.unwrap_err().is_not_found());
    assert!(admin.get("RoleBinding", "team", "take-over").await.unwrap_err().is_not_found());
    let kept = admin.get("Role", "team", "pod-reader").await.unwrap();
    assert_eq!(kept["rules"][0]["resources"], json!(["pods"]));

    // `bind` on one ClusterRole lets it bind that one, and no other.
    let binder = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "bind-view"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                   "verbs": ["bind"], "resourceNames": ["view"]}]});
    admin.create("ClusterRole", "", &binder).await.unwrap();
    admin.create("RoleBinding", "team", &binding("lead-binds-view", "ClusterRole", "bind-view", "lead")).await.unwrap();
    eventually("the new binding to reach the policy", || async {
        lead.create("RoleBinding", "team", &binding("dev-views", "ClusterRole", "view", "dev")).await.ok()
    })
    .await;
    let other = lead.create("RoleBinding", "team", &binding("dev-edits", "ClusterRole", "edit", "dev")).await;
    assert_eq!(code(other), Code::PermissionDenied);
}

/// etcd of a secure cluster speaks only TLS and takes only clients with a
/// certificate of the cluster CA: reaching its port is not reading the
/// cluster's state.
#[tokio::test]
async fn etcd_takes_only_clients_with_a_certificate_of_the_cluster_ca() {
    let cluster = Cluster::start().await.expect("cluster");
    let endpoint = cluster.etcd_endpoint().to_string();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let mut apiserver_identity = cluster.etcd_client().await.unwrap();
    apiserver_identity.put("/probe", "x", None).await.expect("the apiserver's certificate is taken");

    let plain = endpoint.replace("https://", "http://");
    let refused = async |options: Option<etcd_client::ConnectOptions>, url: &str| {
        let timeout = std::time::Duration::from_secs(5);
        let options = options.unwrap_or_default().with_connect_timeout(timeout).with_timeout(timeout);
        match etcd_client::Client::connect([url], Some(options)).await {
            Err(_) => true,
            Ok(mut client) => client.get("/probe", None).await.is_err(),
        }
    };
    assert!(refused(None, &plain).await, "plain HTTP must get nothing");
    let ca = std::fs::read(cluster.pki().unwrap().ca_file()).unwrap();
    let without_certificate =
        etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca.clone()));
    let options = etcd_client::ConnectOptions::new().with_tls(without_certificate);
    assert!(refused(Some(options), &endpoint).await, "TLS without a client certificate must get nothing");
    let other = tempfile::tempdir().unwrap();
    let foreign = skiff_testkit::ClusterPki::open(other.path(), &cluster.server(), &["127.0.0.1".into()]).unwrap();
    let foreign = foreign.etcd_tls(&[]).unwrap();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let foreign_identity = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(ca))
        .identity(etcd_client::Identity::from_pem(read(&foreign.client_cert), read(&foreign.client_key)));
    let options = etcd_client::ConnectOptions::new().with_tls(foreign_identity);
    assert!(refused(Some(options), &endpoint).await, "another CA's certificate must get nothing");
}
