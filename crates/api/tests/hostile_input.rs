//! Property tests standing in for fuzzing (no nightly toolchain here for
//! cargo-fuzz): whatever a client sends — any JSON for any kind, the
//! example manifests with any field replaced by anything, any selector or
//! quantity string — admission and parsing answer Ok or a field error and
//! never panic. Case counts are fixed so CI runs them in bounded time;
//! `PROPTEST_CASES` raises them for a longer hunt.

use proptest::prelude::*;
use serde_json::Value;
use skiff_api::{normalize, FieldSelector, KindInfo, LabelSelector, KINDS};

/// Any JSON value, nested a few levels, with Kubernetes-looking keys often
/// enough to get past the first checks.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![".*", "[0-9]{1,30}[eEkKmMgGTPi]{0,3}", "-?[0-9]+(\\.[0-9]+)?"].prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("metadata".to_string()),
            Just("spec".to_string()),
            Just("name".to_string()),
            Just("containers".to_string()),
            Just("ports".to_string()),
            Just("replicas".to_string()),
            "[a-zA-Z]{1,12}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The example manifests, as JSON documents.
fn examples() -> Vec<Value> {
    let text = include_str!("../../../examples/sample-app.yaml");
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_yaml_ng::with::singleton_map_recursive::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Every path to a value inside `v` (object keys and array indexes).
fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, child)| {
            at.push(k.clone());
            paths(child, at, out);
            at.pop();
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, child)| {
            at.push(i.to_string());
            paths(child, at, out);
            at.pop();
        }),
        _ => {}
    }
}

fn replace(v: &mut Value, path: &[String], with: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = with;
        return;
    };
    let child = match v {
        Value::Object(m) => m.get_mut(first),
        Value::Array(a) => first.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    };
    if let Some(child) = child {
        replace(child, rest, with);
    }
}

fn admit(info: &KindInfo, v: Value) {
    let len = v.to_string().len();
    // Either answer is fine; a panic fails the property.
    let _ = normalize(info, v, len);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_json_for_any_kind_is_answered(kind in 0..KINDS.len(), body in json()) {
        let info = &KINDS[kind];
        let mut v = body;
        if let Value::Object(m) = &mut v {
            m.insert("apiVersion".into(), info.api_version.into());
            m.insert("kind".into(), info.kind.into());
        }
        admit(info, v);
    }

    #[test]
    fn examples_with_any_field_replaced_are_answered(doc in 0..16usize, pick in any::<prop::sample::Index>(), with in json()) {
        let docs = examples();
        let mut v = docs[doc % docs.len()].clone();
        let info = KindInfo::by_kind(v["kind"].as_str().unwrap()).unwrap();
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        replace(&mut v, &path, with);
        admit(info, v);
    }

    #[test]
    fn strategic_merge_patches_apply_or_refuse(target in json(), patch in json()) {
        let mut target = target;
        let _ = skiff_api::patch::strategic_merge(&mut target, &patch);
    }

    #[test]
    fn server_side_applies_apply_or_refuse(current in json(), config in json(), force in any::<bool>()) {
        let applier = skiff_api::apply::Applier { manager: "fuzz", force, api_version: "v1", now: "2026-01-01T00:00:00Z" };
        let first = skiff_api::apply::apply(None, &config, &applier);
        let _ = skiff_api::apply::apply(Some(&current), &config, &applier);
        if let Ok(object) = first {
            let other = skiff_api::apply::Applier { manager: "other", ..applier };
            let _ = skiff_api::apply::apply(Some(&object), &current, &other);
        }
    }

    #[test]
    fn selectors_parse_or_refuse(s in ".*", fields in ".*", kind in 0..KINDS.len()) {
        if let Ok(sel) = LabelSelector::parse(&s) {
            let labels = [("app".to_string(), s.clone())].into();
            let _ = sel.matches(&labels);
        }
        let _ = FieldSelector::parse(KINDS[kind].kind, &fields);
    }

    #[test]
    fn quantities_parse_or_refuse(q in prop_oneof![".*", "[+-]?[0-9]{0,40}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,6}|[numkMGTPE]i?)?"]) {
        let _ = skiff_api::quantity::parse_milli(&q);
    }

    #[test]
    fn plain_integers_are_whole_units(n in 0i64..1_000_000_000_000) {
        prop_assert_eq!(skiff_api::quantity::parse_milli(&n.to_string()), Ok(i128::from(n) * 1000));
    }
}

#[test]
fn the_examples_are_admitted_as_written() {
    for v in examples() {
        let info = KindInfo::by_kind(v["kind"].as_str().unwrap()).unwrap();
        let len = v.to_string().len();
        normalize(info, v, len).expect("an example manifest is refused");
    }
}
