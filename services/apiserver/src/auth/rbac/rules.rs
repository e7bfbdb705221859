//! A PolicyRule compiled for matching: `*` is recognized once and each
//! `resources` entry is split into resource and subresource, so matching a
//! request compares strings and allocates nothing. [`Rule::covered_by`]
//! is the escalation check's question: does a set of rules allow all that
//! this one does?

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::Attributes;

const ALL: &str = "*";

/// One rule of a Role or ClusterRole, ready to match requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    verbs: Names,
    api_groups: Names,
    resources: Vec<Resource>,
    /// Empty: any object. Otherwise only the objects named here, so a
    /// request that names none (create, list, watch) never matches.
    resource_names: Vec<String>,
}

impl Rule {
    /// The rule as it applies to resource requests; `None` for a rule of
    /// non-resource URLs only, which no resource request can match.
    pub fn compile(rule: &PolicyRule) -> Option<Rule> {
        let resources: Vec<Resource> = rule.resources.iter().flatten().map(|r| Resource::parse(r)).collect();
        if resources.is_empty() {
            return None;
        }
        Some(Rule {
            verbs: Names::new(&rule.verbs),
            api_groups: Names::new(rule.api_groups.as_deref().unwrap_or_default()),
            resources,
            resource_names: rule.resource_names.clone().unwrap_or_default(),
        })
    }

    /// Whether this rule allows the request, as Kubernetes' `RuleAllows`.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        self.verbs.contains(attrs.verb)
            && self.api_groups.contains(attrs.api_group)
            && self.resources.iter().any(|r| r.matches(attrs.resource, attrs.subresource))
            && (self.resource_names.is_empty()
                || (!attrs.name.is_empty() && self.resource_names.iter().any(|n| n == attrs.name)))
    }
}

impl Rule {
    /// Whether `owner`'s rules together allow everything this rule does, as
    /// Kubernetes' `Covers`: broken down into single (verb, group,
    /// resource, name) grants, each must be allowed by one owner rule; a
    /// `*` is covered only by a `*`, and a rule for any name only by one
    /// for any name. Returns the first grant not covered.
    pub fn covered_by<'r>(&self, owner: impl Iterator<Item = &'r Rule> + Clone) -> Result<(), String> {
        let names: Vec<Option<&str>> = match self.resource_names.as_slice() {
            [] => vec![None],
            listed => listed.iter().map(|n| Some(n.as_str())).collect(),
        };
        for verb in self.verbs.entries() {
            for group in self.api_groups.entries() {
                for resource in &self.resources {
                    for name in &names {
                        let covered = owner.clone().any(|o| {
                            o.verbs.covers(verb)
                                && o.api_groups.covers(group)
                                && o.resources.iter().any(|r| r.covers(resource))
                                && (o.resource_names.is_empty()
                                    || name.is_some_and(|n| o.resource_names.iter().any(|own| own == n)))
                        });
                        if !covered {
                            let name = name.map(|n| format!(" named {n:?}")).unwrap_or_default();
                            return Err(format!("{verb} {resource} in API group {group:?}{name}"));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A list of verbs or API groups, where `*` stands for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    Listed(Vec<String>),
}

impl Names {
    fn new(names: &[String]) -> Names {
        if names.iter().any(|n| n == ALL) {
            Names::All
        } else {
            Names::Listed(names.to_vec())
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Listed(names) => names.iter().any(|n| n == name),
        }
    }

    /// Each entry, `*` for all.
    fn entries(&self) -> Vec<&str> {
        match self {
            Names::All => vec![ALL],
            Names::Listed(names) => names.iter().map(String::as_str).collect(),
        }
    }

    /// Whether this list allows `entry` (`*` only when it lists `*` too).
    fn covers(&self, entry: &str) -> bool {
        match self {
            Names::All => true,
            Names::Listed(names) => entry != ALL && names.iter().any(|n| n == entry),
        }
    }
}

/// One entry of a rule's `resources`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    /// `*`: every resource and every subresource.
    All,
    /// `pods` (with an empty subresource) or `pods/status`.
    Exact { resource: String, subresource: String },
    /// `pods/*`: every subresource of one resource, not the resource itself.
    SubresourcesOf(String),
    /// `*/scale`: one subresource of every resource.
    SubresourceOfAll(String),
}

impl Resource {
    fn parse(entry: &str) -> Resource {
        match entry.split_once('/') {
            _ if entry == ALL => Resource::All,
            None => Resource::Exact { resource: entry.to_string(), subresource: String::new() },
            Some((ALL, subresource)) => Resource::SubresourceOfAll(subresource.to_string()),
            Some((resource, ALL)) => Resource::SubresourcesOf(resource.to_string()),
            Some((resource, subresource)) => {
                Resource::Exact { resource: resource.to_string(), subresource: subresource.to_string() }
            }
        }
    }

    /// Whether this entry allows all that `wanted` does.
    fn covers(&self, wanted: &Resource) -> bool {
        match (self, wanted) {
            (Resource::All, _) => true,
            (Resource::Exact { .. }, Resource::Exact { .. }) => self == wanted,
            (Resource::SubresourcesOf(r), Resource::Exact { resource, subresource }) => {
                !subresource.is_empty() && r == resource
            }
            (Resource::SubresourcesOf(r), Resource::SubresourcesOf(w)) => r == w,
            (Resource::SubresourceOfAll(s), Resource::Exact { subresource, .. }) => s == subresource,
            (Resource::SubresourceOfAll(s), Resource::SubresourceOfAll(w)) => s == w,
            _ => false,
        }
    }

    fn matches(&self, resource: &str, subresource: &str) -> bool {
        match self {
            Resource::All => true,
            Resource::Exact { resource: r, subresource: s } => r == resource && s == subresource,
            Resource::SubresourcesOf(r) => !subresource.is_empty() && r == resource,
            Resource::SubresourceOfAll(s) => !subresource.is_empty() && s == subresource,
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::All => f.write_str(ALL),
            Resource::Exact { resource, subresource } if subresource.is_empty() => f.write_str(resource),
            Resource::Exact { resource, subresource } => write!(f, "{resource}/{subresource}"),
            Resource::SubresourcesOf(resource) => write!(f, "{resource}/{ALL}"),
            Resource::SubresourceOfAll(subresource) => write!(f, "{ALL}/{subresource}"),
        }
    }
}
