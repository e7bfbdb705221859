//! Roles and bindings as Kubernetes validates them
//! (`pkg/apis/rbac/validation`): every rule says which verbs it allows and
//! on what, a binding names a role it can refer to, and every subject is
//! something an authorizer can match a user against.

use k8s_openapi::api::rbac::v1 as rbac;

use super::{dns_subdomain_problem, labels, path_segment_problem, Errors};
use crate::well_known::RBAC_GROUP;
use crate::LabelSelector;

/// Where a rule or binding lives: a namespace (Role, RoleBinding) or the
/// whole cluster (ClusterRole, ClusterRoleBinding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Namespace,
    Cluster,
}

/// A Role's or ClusterRole's rules. Only a ClusterRole may name
/// non-resource URLs (`/healthz`): they exist outside every namespace.
pub(crate) fn policy_rules(rules: Option<&[rbac::PolicyRule]>, scope: Scope, errs: &mut Errors) {
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        policy_rule(rule, scope, &format!("rules[{i}]"), errs);
    }
}

fn policy_rule(rule: &rbac::PolicyRule, scope: Scope, path: &str, errs: &mut Errors) {
    let given = |list: &Option<Vec<String>>| list.as_ref().is_some_and(|l| !l.is_empty());
    if rule.verbs.is_empty() {
        errs.add(format!("{path}.verbs"), "required: at least one verb (\"*\" for all)");
    }
    if given(&rule.non_resource_urls) {
        if scope == Scope::Namespace {
            errs.add(format!("{path}.nonResourceURLs"), "namespaced rules cannot apply to non-resource URLs");
        }
        if given(&rule.api_groups) || given(&rule.resources) || given(&rule.resource_names) {
            errs.add(
                format!("{path}.nonResourceURLs"),
                "rules cannot apply to both regular resources and non-resource URLs",
            );
        }
        return;
    }
    if !given(&rule.api_groups) {
        errs.add(format!("{path}.apiGroups"), "required: resource rules need at least one API group (\"\" for core)");
    }
    if !given(&rule.resources) {
        errs.add(format!("{path}.resources"), "required: resource rules need at least one resource");
    }
}

/// An aggregated ClusterRole's selectors pick the ClusterRoles whose rules
/// it takes: at least one, each a valid label selector.
pub(crate) fn aggregation_rule(rule: Option<&rbac::AggregationRule>, errs: &mut Errors) {
    let Some(rule) = rule else { return };
    let selectors = rule.cluster_role_selectors.as_deref().unwrap_or_default();
    if selectors.is_empty() {
        errs.add("aggregationRule.clusterRoleSelectors", "required: at least one selector when aggregationRule is set");
    }
    for (i, selector) in selectors.iter().enumerate() {
        let path = format!("aggregationRule.clusterRoleSelectors[{i}]");
        labels(selector.match_labels.as_ref(), &format!("{path}.matchLabels"), errs);
        if let Err(e) = LabelSelector::from_k8s(selector) {
            errs.add(path, e.to_string());
        }
    }
}

/// A binding's roleRef: a Role or ClusterRole of the RBAC group, by name.
/// A ClusterRoleBinding grants everywhere, so it can only name a ClusterRole.
pub(crate) fn role_ref(role_ref: &rbac::RoleRef, scope: Scope, errs: &mut Errors) {
    let group = role_ref.api_group.as_deref().unwrap_or_default();
    if group != RBAC_GROUP {
        errs.add("roleRef.apiGroup", format!("unsupported value {group:?}: must be {RBAC_GROUP}"));
    }
    let kinds: &[&str] = match scope {
        Scope::Namespace => &["Role", "ClusterRole"],
        Scope::Cluster => &["ClusterRole"],
    };
    match role_ref.kind.as_str() {
        "" => errs.add("roleRef.kind", format!("required: one of {}", kinds.join(", "))),
        kind if !kinds.contains(&kind) => {
            errs.add("roleRef.kind", format!("unsupported value {kind:?}: must be one of {}", kinds.join(", ")))
        }
        _ => {}
    }
    match role_ref.name.as_str() {
        "" => errs.add("roleRef.name", "required"),
        name => {
            if let Some(p) = path_segment_problem(name) {
                errs.add("roleRef.name", p);
            }
        }
    }
}

/// Who a binding grants its role to. A ServiceAccount subject of a
/// ClusterRoleBinding must say its namespace; in a RoleBinding it may leave
/// it out and means the binding's own.
pub(crate) fn subjects(subjects: Option<&[rbac::Subject]>, scope: Scope, errs: &mut Errors) {
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        subject(s, scope, &format!("subjects[{i}]"), errs);
    }
}

fn subject(s: &rbac::Subject, scope: Scope, path: &str, errs: &mut Errors) {
    if s.name.is_empty() {
        errs.add(format!("{path}.name"), "required");
    }
    let group = s.api_group.as_deref().unwrap_or_default();
    match s.kind.as_str() {
        "ServiceAccount" => {
            if let Some(p) = dns_subdomain_problem(&s.name).filter(|_| !s.name.is_empty()) {
                errs.add(format!("{path}.name"), p);
            }
            if !group.is_empty() {
                errs.add(
                    format!("{path}.apiGroup"),
                    format!("unsupported value {group:?}: must be \"\" for a ServiceAccount"),
                );
            }
            if scope == Scope::Cluster && s.namespace.as_deref().is_none_or(str::is_empty) {
                errs.add(format!("{path}.namespace"), "required: the ServiceAccount's namespace");
            }
        }
        "User" | "Group" => {
            if group != RBAC_GROUP {
                errs.add(format!("{path}.apiGroup"), format!("unsupported value {group:?}: must be {RBAC_GROUP}"));
            }
        }
        "" => errs.add(format!("{path}.kind"), "required: one of ServiceAccount, User, Group"),
        other => errs.add(
            format!("{path}.kind"),
            format!("unsupported value {other:?}: must be one of ServiceAccount, User, Group"),
        ),
    }
}
