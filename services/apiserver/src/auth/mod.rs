//! Who is calling and what they may do.
//!
//! Authentication runs as an interceptor in front of every gRPC service:
//! the client certificate the TLS handshake verified (CN = user, O =
//! groups), else a bearer token from `--token-auth-file`, else anonymous
//! (refused unless `--anonymous-auth`). The caller it finds travels in the
//! request's extensions. Authorization runs per call, once the request
//! says what it touches (kind, namespace, name): RBAC over the cluster's
//! Roles and bindings, or AlwaysAllow.

pub mod bootstrap;
pub mod bootstrap_tokens;
pub mod escalation;
pub mod node_authorizer;
pub mod node_restriction;
mod policy;
pub mod rbac;
pub mod serviceaccount;
pub mod tokens;

use std::sync::Arc;

use skiff_api::KindInfo;
use tonic::{Request, Status};

pub use policy::RbacAuthorizer;
pub use rbac::UserInfo;
pub use skiff_pki::serve::PeerInfo;

/// Every authenticated user is in this group, as in Kubernetes.
pub const AUTHENTICATED: &str = "system:authenticated";

/// How the apiserver tells who is calling.
pub struct Authenticator {
    tokens: tokens::TokenFile,
    service_accounts: Option<ServiceAccountTokens>,
    bootstrap_tokens: bootstrap_tokens::BootstrapTokens,
    anonymous: bool,
}

/// What checks a ServiceAccount token: the key it was signed with, and the
/// objects it names, which must still exist.
pub struct ServiceAccountTokens {
    pub signer: Arc<serviceaccount::TokenSigner>,
    pub registry: Arc<crate::registry::Registry>,
}

impl ServiceAccountTokens {
    /// The user `token` authenticates as, if it is a valid ServiceAccount
    /// token whose ServiceAccount (and pod) still exist with their UIDs.
    fn user(&self, token: &str) -> Result<UserInfo, &'static str> {
        let claims = self.signer.verify(token, serviceaccount::now())?;
        let bound = &claims.kubernetes;
        if self.uid_of("ServiceAccount", &bound.namespace, &bound.serviceaccount.name)
            != Some(bound.serviceaccount.uid.clone())
        {
            return Err("its ServiceAccount is gone");
        }
        if let Some(pod) = &bound.pod {
            if self.uid_of("Pod", &bound.namespace, &pod.name) != Some(pod.uid.clone()) {
                return Err("its pod is gone");
            }
        }
        Ok(serviceaccount::user_of(&claims))
    }

    fn uid_of(&self, kind: &str, namespace: &str, name: &str) -> Option<String> {
        let info = KindInfo::by_kind(kind).ok()?;
        let object = self.registry.cache(info).get(&info.key(namespace, name))?;
        let value: serde_json::Value = serde_json::from_slice(&object.json).ok()?;
        value.pointer("/metadata/uid")?.as_str().map(str::to_string)
    }
}

impl Authenticator {
    pub fn new(
        tokens: tokens::TokenFile,
        service_accounts: Option<ServiceAccountTokens>,
        bootstrap_tokens: bootstrap_tokens::BootstrapTokens,
        anonymous: bool,
    ) -> Self {
        Self { tokens, service_accounts, bootstrap_tokens, anonymous }
    }

    /// The caller of `request`: its certificate's user, its token's, or
    /// anonymous. A token that is presented but unknown is refused even when
    /// anonymous calls are allowed: a client that meant to be someone must
    /// not silently become no one.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<UserInfo, Status> {
        if let Some(peer) = request.extensions().get::<PeerInfo>() {
            let now = chrono::Utc::now().timestamp();
            if let Some(subject) = peer.subject(now).map_err(Status::unauthenticated)? {
                let mut groups = subject.groups.clone();
                groups.push(AUTHENTICATED.to_string());
                return Ok(UserInfo { name: subject.user.clone(), uid: String::new(), groups });
            }
        }
        if let Some(header) = request.metadata().get("authorization") {
            let token = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
            let Some(token) = token else { return Err(Status::unauthenticated("invalid bearer token")) };
            if let Some(user) = self.tokens.user(token) {
                return Ok(user.clone());
            }
            if bootstrap_tokens::is_bootstrap_token(token) {
                return self
                    .bootstrap_tokens
                    .user(token, chrono::Utc::now())
                    .map_err(|why| Status::unauthenticated(format!("invalid bootstrap token: {why}")));
            }
            return match &self.service_accounts {
                Some(sa) if token.matches('.').count() == 2 => {
                    sa.user(token).map_err(|why| Status::unauthenticated(format!("invalid bearer token: {why}")))
                }
                _ => Err(Status::unauthenticated("invalid bearer token")),
            };
        }
        if self.anonymous {
            return Ok(UserInfo {
                name: "system:anonymous".into(),
                uid: String::new(),
                groups: vec!["system:unauthenticated".into()],
            });
        }
        Err(Status::unauthenticated(
            "no credentials: present a client certificate signed by the cluster CA or a bearer token",
        ))
    }
}

/// The interceptor every gRPC service of the apiserver runs behind: it
/// puts the caller's [`UserInfo`] into the request's extensions.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let user = self.0.authenticate(&request)?;
        request.extensions_mut().insert(user);
        Ok(request)
    }
}

/// The caller the interceptor found. A request that reaches a handler has
/// one; a missing one means the service was wired without the interceptor,
/// so it is refused rather than let through.
pub fn caller<T>(request: &Request<T>) -> Result<UserInfo, Status> {
    request
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

/// The user `caller` acts as through Kubernetes' impersonation
/// (`Impersonate-User`, `Impersonate-Group`; kubectl's `--as`,
/// `--as-group`): allowed only where the caller may `impersonate` that user
/// (or ServiceAccount) and each group. The impersonated user is
/// authenticated, as in Kubernetes.
pub fn impersonate(
    authorizer: &Authorizer,
    caller: &UserInfo,
    user: &str,
    groups: &[String],
) -> Result<UserInfo, String> {
    let (resource, namespace, name) = match user.strip_prefix(skiff_api::well_known::SERVICE_ACCOUNT_USER_PREFIX) {
        Some(account) => match account.split_once(':') {
            Some((namespace, name)) => ("serviceaccounts", namespace, name),
            None => return Err(format!("{user:?} is not a ServiceAccount's user name")),
        },
        None => ("users", "", user),
    };
    let may = |resource: &str, namespace: &str, name: &str| {
        let attributes =
            rbac::Attributes { verb: "impersonate", resource, namespace, name, ..rbac::Attributes::default() };
        authorizer.authorize_attributes(caller, &attributes)
    };
    may(resource, namespace, name)?;
    for group in groups {
        may("groups", "", group)?;
    }
    let mut impersonated_groups = groups.to_vec();
    if resource == "serviceaccounts" {
        impersonated_groups.push("system:serviceaccounts".into());
        impersonated_groups.push(format!("system:serviceaccounts:{namespace}"));
    }
    if !impersonated_groups.iter().any(|g| g == AUTHENTICATED) {
        impersonated_groups.push(AUTHENTICATED.to_string());
    }
    Ok(UserInfo { name: user.to_string(), uid: String::new(), groups: impersonated_groups })
}

/// What a call does, in the words RBAC rules use.
pub struct Access<'a> {
    pub verb: &'a str,
    pub kind: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Who decides whether a caller may do something.
pub enum Authorizer {
    /// Everything is allowed (`--authorization-mode=AlwaysAllow`).
    AlwaysAllow,
    /// Kubernetes' `Node,RBAC`: kubelets' reads of what their pods use,
    /// then RBAC for everything else.
    Rbac { nodes: node_authorizer::NodeAuthorizer, rbac: RbacAuthorizer },
}

impl Authorizer {
    /// Ok, or why not, naming the verb, resource and namespace.
    pub fn authorize(&self, user: &UserInfo, access: &Access) -> Result<(), String> {
        if matches!(self, Authorizer::AlwaysAllow) {
            return Ok(());
        }
        // Unknown kinds are refused by the call itself with the kind named;
        // authorizing them first would hide that message.
        let Ok(info) = KindInfo::by_kind(access.kind) else { return Ok(()) };
        // As Kubernetes' request attributes: a cluster-scoped object has no
        // namespace, a Namespace is in itself, and a create names nothing
        // yet (so rules restricted to names can't allow creating them).
        let namespace = match (info.namespaced, info.kind) {
            (true, _) => access.namespace,
            (false, "Namespace") => access.name,
            (false, _) => "",
        };
        let name = if access.verb == "create" && access.subresource.is_empty() { "" } else { access.name };
        let attributes = rbac::Attributes {
            verb: access.verb,
            api_group: info.group(),
            resource: info.plural,
            subresource: access.subresource,
            namespace,
            name,
        };
        self.authorize_attributes(user, &attributes)
    }

    /// [`authorize`](Self::authorize) for what is not one of the served
    /// kinds (subjectaccessreviews, say).
    pub fn authorize_attributes(&self, user: &UserInfo, attributes: &rbac::Attributes) -> Result<(), String> {
        match self {
            Authorizer::AlwaysAllow => Ok(()),
            Authorizer::Rbac { nodes, .. } if nodes.allows(user, attributes) => Ok(()),
            Authorizer::Rbac { rbac, .. } => rbac.policy().authorize(user, attributes),
        }
    }
}

/// Creates the default ClusterRoles and ClusterRoleBindings
/// ([`bootstrap`]) that are missing, and brings back in line those still
/// annotated `rbac.authorization.kubernetes.io/autoupdate: "true"` (an
/// operator who edits one and sets it to "false" keeps the edit), as
/// kube-apiserver does at start.
pub async fn ensure_default_policy(registry: &crate::registry::Registry) -> Result<(), crate::Error> {
    let roles = bootstrap::cluster_roles().into_iter().map(|r| serde_json::to_value(r).map(|v| ("ClusterRole", v)));
    let bindings = bootstrap::cluster_role_bindings()
        .into_iter()
        .map(|b| serde_json::to_value(b).map(|v| ("ClusterRoleBinding", v)));
    for item in roles.chain(bindings) {
        let (kind, mut wanted) = item.map_err(|e| crate::Error::BadRequest(format!("default policy: {e}")))?;
        wanted["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
        wanted["kind"] = kind.into();
        let name = wanted["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match registry.create(kind, "", wanted.to_string().as_bytes(), None, false).await {
            Ok(_) => continue,
            Err(crate::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let stored: serde_json::Value = serde_json::from_slice(&registry.get(kind, "", &name).await?)
            .map_err(|source| crate::Error::BadJson { what: "a stored default role", source })?;
        let auto = stored.pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate");
        let content = ["rules", "aggregationRule", "roleRef", "subjects"];
        if auto.and_then(|v| v.as_str()) != Some("true") || content.iter().all(|f| stored.get(f) == wanted.get(f)) {
            continue;
        }
        wanted["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
        match registry.update(kind, "", wanted.to_string().as_bytes(), false, false).await {
            // Another apiserver reconciled it meanwhile.
            Ok(_) | Err(crate::Error::Conflict { .. }) => tracing::info!(kind, name, "default RBAC object updated"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
