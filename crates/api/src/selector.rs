//! Label selectors (`app=web,tier in (fe,be),!canary`) and field selectors
//! (`spec.nodeName=n1,status.phase!=Running`) with Kubernetes' syntax.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use crate::{meta, Error};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses the string form used by `-l` and the API.
    pub fn parse(selector: &str) -> Result<Self, Error> {
        let err = |reason: String| Error::Selector { what: "label", selector: selector.into(), reason };
        let mut requirements = Vec::new();
        for term in split_terms(selector) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term).map_err(err)?);
        }
        Ok(Self { requirements })
    }

    /// Builds the selector a workload's `spec.selector` describes.
    pub fn from_k8s(selector: &metav1::LabelSelector) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                op => {
                    return Err(Error::field(
                        format!("matchExpressions[{i}]"),
                        format!("operator {op:?} with {} values is not valid (In, NotIn need values; Exists, DoesNotExist take none)", values.len()),
                    ))
                }
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Matches the labels of an object held as JSON.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside a `(...)` value list.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

fn parse_label_term(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(checked_key(key.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(checked_key(k.trim())?, checked_value(v.trim())?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(checked_key(k.trim())?, checked_value(v.trim())?));
    }
    for (op, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = term.split_once(op) {
            let list = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: expected a (value, ...) list after {}", op.trim()))?;
            let values = list.split(',').map(|v| checked_value(v.trim())).collect::<Result<Vec<_>, _>>()?;
            let key = checked_key(k.trim())?;
            return Ok(if negate { Requirement::NotIn(key, values) } else { Requirement::In(key, values) });
        }
    }
    Ok(Requirement::Exists(checked_key(term)?))
}

fn checked_key(key: &str) -> Result<String, String> {
    crate::validation::label_key_problem(key).map_or(Ok(key.to_string()), |p| Err(format!("key {key:?}: {p}")))
}

fn checked_value(value: &str) -> Result<String, String> {
    crate::validation::label_value_problem(value)
        .map_or(Ok(value.to_string()), |p| Err(format!("value {value:?}: {p}")))
}

/// The fields a kind can be selected on: every kind's name and namespace,
/// and those Kubernetes supports for a few kinds that controllers rely on.
pub fn selectable_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.schedulerName",
            "spec.restartPolicy",
            "status.phase",
            "status.podIP",
        ],
        "Node" => &["metadata.name", "metadata.namespace", "spec.unschedulable"],
        "Event" => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.fieldPath",
            "reason",
            "type",
        ],
        "Secret" => &["metadata.name", "metadata.namespace", "type"],
        "Namespace" => &["metadata.name", "metadata.namespace", "status.phase"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

/// The values of `kind`'s selectable fields in `obj`, as strings ("" when
/// absent), for caches that keep them beside the encoded object.
pub fn field_values(kind: &str, obj: &Value) -> Vec<(&'static str, String)> {
    selectable_fields(kind).iter().map(|f| (*f, field_string(obj, f))).collect()
}

/// A field's value as a selector compares it: "" when absent.
fn field_string(obj: &Value, field: &str) -> String {
    match meta::lookup(obj, field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A parsed field selector: a conjunction of `field=value` / `field!=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(kind: &str, selector: &str) -> Result<Self, Error> {
        let err = |reason: String| Error::Selector { what: "field", selector: selector.into(), reason };
        let mut terms = Vec::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(err(format!("{term:?} is not field=value or field!=value")));
            };
            let field = field.trim();
            if !selectable_fields(kind).contains(&field) {
                return Err(err(format!("field {field:?} is not supported for {kind}")));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The one name it selects (`metadata.name=NAME`), if it requires one:
    /// a list or watch of one object, authorized as that object, as
    /// Kubernetes' request info reads it.
    pub fn exact_name(&self) -> Option<&str> {
        self.terms.iter().find(|(field, equal, _)| *equal && field == "metadata.name").map(|(_, _, v)| v.as_str())
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(|field| std::borrow::Cow::Owned(field_string(obj, field)))
    }

    /// Matches against field values looked up by `get` ("" when absent).
    pub fn matches<'a>(&self, get: impl Fn(&str) -> std::borrow::Cow<'a, str>) -> bool {
        self.terms.iter().all(|(field, equal, want)| (get(field) == want.as_str()) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse("app=web, tier in (fe,be),env!=prod,!canary,track, zone notin (a)").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("track", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db"), ("track", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("track", "x"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("track", "x"), ("zone", "a")])));
        assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn refuses_bad_label_selectors() {
        assert!(LabelSelector::parse("tier in fe").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
        assert!(LabelSelector::parse("app=has space").is_err());
        let msg = LabelSelector::parse("-x=1").unwrap_err().to_string();
        assert!(msg.contains("label selector"), "{msg}");
    }

    #[test]
    fn builds_from_workload_selectors() {
        let sel: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]
        }))
        .unwrap();
        let s = LabelSelector::from_k8s(&sel).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        let bad: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "t", "operator": "Near"}]})).unwrap();
        assert!(LabelSelector::from_k8s(&bad).is_err());
    }

    #[test]
    fn field_selectors_match_json() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("Pod", "spec.nodeName=n1,status.phase!=Pending").unwrap().matches_object(&pod));
        assert!(!FieldSelector::parse("Pod", "spec.nodeName=n2").unwrap().matches_object(&pod));
        assert!(FieldSelector::parse("Pod", "spec.nodeName=").unwrap().matches_object(&json!({})));
        assert!(FieldSelector::parse("ConfigMap", "spec.nodeName=n1").is_err());
        assert!(FieldSelector::parse("Pod", "nonsense").is_err());
    }
}
