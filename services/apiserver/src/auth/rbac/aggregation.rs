//! The rules each ClusterRole grants. An aggregated one
//! (`aggregationRule.clusterRoleSelectors`) grants the union of the rules
//! of every other ClusterRole that one of its selectors matches, in place of
//! its own, as Kubernetes' clusterrole-aggregation controller writes them.
//! That controller converges over several passes when aggregates feed
//! aggregates (view → edit → admin); here the passes run at build until
//! nothing changes, so the result is the same, cycles included.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::rbac::v1::ClusterRole;
use skiff_api::LabelSelector;

use super::rules::Rule;

/// Each ClusterRole's name and the rules it grants.
pub(super) fn cluster_role_rules(roles: &[ClusterRole]) -> HashMap<&str, Vec<Rule>> {
    let sources: Vec<Option<Vec<usize>>> = roles.iter().enumerate().map(|(i, r)| sources(roles, i, r)).collect();
    let mut rules: Vec<Vec<Rule>> = roles
        .iter()
        .zip(&sources)
        .map(|(role, sources)| match sources {
            Some(_) => Vec::new(),
            None => compile(role.rules.iter().flatten().filter_map(Rule::compile)),
        })
        .collect();
    loop {
        let mut changed = false;
        for (i, from) in sources.iter().enumerate() {
            let Some(from) = from else { continue };
            let missing: Vec<Rule> =
                from.iter().flat_map(|&j| &rules[j]).filter(|r| !rules[i].contains(r)).cloned().collect();
            for rule in missing {
                if !rules[i].contains(&rule) {
                    rules[i].push(rule);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    roles.iter().map(|r| r.metadata.name.as_deref().unwrap_or_default()).zip(rules).collect()
}

/// For an aggregated ClusterRole, the indices of the other ClusterRoles its
/// selectors match; `None` for a plain one. A selector that does not parse
/// (validation refuses them) matches nothing.
fn sources(roles: &[ClusterRole], index: usize, role: &ClusterRole) -> Option<Vec<usize>> {
    let selectors: Vec<LabelSelector> = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| LabelSelector::from_k8s(s).ok())
        .collect();
    let no_labels = BTreeMap::new();
    let matched = roles.iter().enumerate().filter(|(j, other)| {
        let labels = other.metadata.labels.as_ref().unwrap_or(&no_labels);
        *j != index && selectors.iter().any(|s| s.matches(labels))
    });
    Some(matched.map(|(j, _)| j).collect())
}

/// Rules without repeats, in their first order.
fn compile(rules: impl Iterator<Item = Rule>) -> Vec<Rule> {
    let mut unique = Vec::new();
    for rule in rules {
        if !unique.contains(&rule) {
            unique.push(rule);
        }
    }
    unique
}
