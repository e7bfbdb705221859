//! The authorizer's policy, with the semantics of Kubernetes' RBAC
//! authorizer: a request is allowed when a rule of a role bound to the user
//! (by name, by one of its groups, or as a ServiceAccount) allows its verb,
//! API group, resource and name. ClusterRoleBindings grant everywhere;
//! RoleBindings only in their own namespace, whether they name a Role or a
//! ClusterRole. Members of `system:masters` may do anything. Everything else
//! is denied.
//!
//! Pure: [`Policy::build`] compiles the objects once (roles resolved,
//! aggregated ClusterRoles expanded, bindings indexed by subject), so
//! [`Policy::authorize`] looks up the user's own and its groups' grants and
//! matches strings, without scanning every binding or decoding anything.
//! Build a new Policy when the objects change.

mod aggregation;
mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use skiff_api::well_known::{MASTERS_GROUP, SERVICE_ACCOUNT_USER_PREFIX};

use rules::Rule;

/// Who makes a request, as authentication found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// What a request asks to do, as Kubernetes' authorizer attributes.
///
/// `namespace` is empty for cluster-scoped kinds and for requests across
/// all namespaces; `name` is empty when the request names no object
/// (create, list, watch), as in Kubernetes. UpdateStatus is verb `update`
/// on subresource `status`; Bind is `create` on `pods` / `binding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    /// `""` for the core group.
    pub api_group: &'a str,
    /// The plural: `pods`.
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Who may do what: every binding's rules, indexed by the subject they
/// are granted to. Cheap to query; rebuilt whole when RBAC objects change.
#[derive(Debug, Default)]
pub struct Policy {
    users: HashMap<String, Grants>,
    groups: HashMap<String, Grants>,
    /// Every role's rules, for the escalation check of a binding.
    roles: RoleRules,
}

/// The rule sets bound to one subject.
#[derive(Debug, Default)]
struct Grants {
    /// Through ClusterRoleBindings: in every namespace and at cluster scope.
    everywhere: Vec<Arc<[Rule]>>,
    /// Through RoleBindings: only in the binding's namespace.
    in_namespace: HashMap<String, Vec<Arc<[Rule]>>>,
}

/// Every role's compiled rules, by name. Bindings of one role share its rules.
#[derive(Debug, Default)]
struct RoleRules {
    /// Roles by namespace and name.
    namespaced: HashMap<(String, String), Arc<[Rule]>>,
    /// ClusterRoles by name, aggregated ones expanded.
    cluster: HashMap<String, Arc<[Rule]>>,
}

/// Whom a binding's subject stands for. A ServiceAccount is the user
/// `system:serviceaccount:NAMESPACE:NAME`, so it is indexed as that user.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grantee {
    User(String),
    Group(String),
}

// === impl Policy ===

impl Policy {
    /// Compiles the RBAC objects: resolves each binding's roleRef (a binding
    /// to a missing role grants nothing, as in Kubernetes) and indexes the
    /// role's rules under each of the binding's subjects.
    pub fn build(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Policy {
        let rules = RoleRules::compile(&roles, &cluster_roles);
        let mut policy = Policy::default();
        for binding in &cluster_role_bindings {
            policy.grant_everywhere(binding, &rules);
        }
        for binding in &role_bindings {
            policy.grant_in_namespace(binding, &rules);
        }
        policy.roles = rules;
        policy
    }

    /// Whether `user` already holds every permission `rules` grant, in
    /// `namespace` (through ClusterRoleBindings and that namespace's
    /// RoleBindings), or cluster-wide when it is empty (ClusterRoleBindings
    /// only): RBAC's escalation check, so the right to write roles is not
    /// the right to grant oneself more. Says which permission is missing.
    pub fn covers(&self, user: &UserInfo, namespace: &str, rules: &[PolicyRule]) -> Result<(), String> {
        let compiled: Vec<Rule> = rules.iter().filter_map(Rule::compile).collect();
        self.covers_compiled(user, namespace, &compiled)
    }

    /// [`covers`](Self::covers) for the rules of an existing role: `kind`
    /// `Role` (in `namespace`) or `ClusterRole`. A missing role is an error,
    /// as in Kubernetes: its rules can't be checked.
    pub fn covers_role(&self, user: &UserInfo, namespace: &str, kind: &str, name: &str) -> Result<(), String> {
        let rules = match kind {
            "Role" => self.roles.namespaced.get(&(namespace.to_string(), name.to_string())),
            "ClusterRole" => self.roles.cluster.get(name),
            _ => None,
        };
        let rules = rules.ok_or_else(|| format!("{kind} {name:?} not found"))?;
        self.covers_compiled(user, namespace, rules)
    }

    fn covers_compiled(&self, user: &UserInfo, namespace: &str, wanted: &[Rule]) -> Result<(), String> {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return Ok(());
        }
        let own = self.users.get(user.name.as_str());
        let grants: Vec<&Grants> =
            own.into_iter().chain(user.groups.iter().filter_map(|g| self.groups.get(g.as_str()))).collect();
        let held = grants.iter().flat_map(|g| g.applicable(namespace)).flat_map(|rules| rules.iter());
        for rule in wanted {
            rule.covered_by(held.clone()).map_err(|missing| format!("user {:?} may not grant {missing}", user.name))?;
        }
        Ok(())
    }

    /// Allows the request, or says why not in Kubernetes' words:
    /// `User "alice" cannot list resource "secrets" in API group "" in the namespace "default"`.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return Ok(());
        }
        let own = self.users.get(user.name.as_str());
        let through_groups = user.groups.iter().filter_map(|g| self.groups.get(g.as_str()));
        if own.into_iter().chain(through_groups).any(|grants| grants.allow(attrs)) {
            return Ok(());
        }
        Err(denial(user, attrs))
    }

    /// A ClusterRoleBinding: its ClusterRole's rules, everywhere. Granting
    /// everywhere, it can only name a ClusterRole.
    fn grant_everywhere(&mut self, binding: &ClusterRoleBinding, rules: &RoleRules) {
        if binding.role_ref.kind != "ClusterRole" {
            return;
        }
        let Some(rules) = rules.cluster.get(binding.role_ref.name.as_str()) else { return };
        for grantee in binding.subjects.iter().flatten().filter_map(|s| Grantee::of(s, "")) {
            push_unique(&mut self.grants(grantee).everywhere, rules);
        }
    }

    /// A RoleBinding: its Role's (looked up in the binding's namespace) or
    /// ClusterRole's rules, in the binding's namespace only.
    fn grant_in_namespace(&mut self, binding: &RoleBinding, rules: &RoleRules) {
        let namespace = binding.metadata.namespace.as_deref().unwrap_or_default();
        let name = binding.role_ref.name.as_str();
        let rules = match binding.role_ref.kind.as_str() {
            "Role" => rules.namespaced.get(&(namespace.to_string(), name.to_string())),
            "ClusterRole" => rules.cluster.get(name),
            _ => None,
        };
        let Some(rules) = rules else { return };
        for grantee in binding.subjects.iter().flatten().filter_map(|s| Grantee::of(s, namespace)) {
            push_unique(self.grants(grantee).in_namespace.entry(namespace.to_string()).or_default(), rules);
        }
    }

    fn grants(&mut self, grantee: Grantee) -> &mut Grants {
        match grantee {
            Grantee::User(name) => self.users.entry(name).or_default(),
            Grantee::Group(name) => self.groups.entry(name).or_default(),
        }
    }
}

/// Adds a role's rules to a subject's list once, however many bindings
/// grant them; a role without rules grants nothing and is left out.
fn push_unique(list: &mut Vec<Arc<[Rule]>>, rules: &Arc<[Rule]>) {
    if !rules.is_empty() && !list.iter().any(|r| Arc::ptr_eq(r, rules)) {
        list.push(rules.clone());
    }
}

/// Kubernetes' forbidden message for a resource request.
fn denial(user: &UserInfo, attrs: &Attributes) -> String {
    let resource = match attrs.subresource {
        "" => attrs.resource.to_string(),
        sub => format!("{}/{sub}", attrs.resource),
    };
    let scope = match attrs.namespace {
        "" => "at the cluster scope".to_string(),
        ns => format!("in the namespace {ns:?}"),
    };
    format!(
        "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, attrs.verb, attrs.api_group
    )
}

// === impl RoleRules ===

impl RoleRules {
    fn compile(roles: &[Role], cluster_roles: &[ClusterRole]) -> RoleRules {
        let namespaced = roles
            .iter()
            .map(|r| {
                let namespace = r.metadata.namespace.clone().unwrap_or_default();
                let name = r.metadata.name.clone().unwrap_or_default();
                ((namespace, name), r.rules.iter().flatten().filter_map(Rule::compile).collect())
            })
            .collect();
        let cluster = aggregation::cluster_role_rules(cluster_roles)
            .into_iter()
            .map(|(name, rules)| (name.to_string(), rules.into()))
            .collect();
        RoleRules { namespaced, cluster }
    }
}

// === impl Grants ===

impl Grants {
    /// The rule sets that apply in `namespace` ("": cluster-wide only).
    fn applicable<'g>(&'g self, namespace: &str) -> impl Iterator<Item = &'g Arc<[Rule]>> + Clone {
        let local = (!namespace.is_empty()).then(|| self.in_namespace.get(namespace)).flatten();
        self.everywhere.iter().chain(local.into_iter().flatten())
    }

    fn allow(&self, attrs: &Attributes) -> bool {
        let allows = |sets: &[Arc<[Rule]>]| sets.iter().flat_map(|rules| rules.iter()).any(|r| r.allows(attrs));
        allows(&self.everywhere)
            || (!attrs.namespace.is_empty() && self.in_namespace.get(attrs.namespace).is_some_and(|sets| allows(sets)))
    }
}

// === impl Grantee ===

impl Grantee {
    /// Whom `subject` stands for. A ServiceAccount without a namespace is
    /// one of the binding's namespace (`binding_namespace`, empty for a
    /// ClusterRoleBinding, where it then stands for no one).
    fn of(subject: &Subject, binding_namespace: &str) -> Option<Grantee> {
        match subject.kind.as_str() {
            "User" => Some(Grantee::User(subject.name.clone())),
            "Group" => Some(Grantee::Group(subject.name.clone())),
            "ServiceAccount" => {
                let namespace = subject.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(binding_namespace);
                (!namespace.is_empty())
                    .then(|| Grantee::User(format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{}", subject.name)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
