//! LimitRange admission, as Kubernetes' LimitRanger: a pod created in a
//! namespace with LimitRanges gets each `Container` item's `default`
//! limits and `defaultRequest` requests where a container sets none, then
//! must keep within `min`, `max` and `maxLimitRequestRatio` per container
//! and, for a `Pod` item, summed over its containers. A pod outside them is
//! refused, naming the container, the resource and the LimitRange.

use serde_json::{Map, Value};
use skiff_api::quantity::parse_milli;

use super::Admitted;
use crate::registry::Registry;
use crate::Error;

pub async fn admit_pod(registry: &Registry, namespace: &str, pod: &mut Admitted<'_>) -> Result<(), Error> {
    let ranges = registry.cached_in_namespace("LimitRange", namespace).await?;
    if ranges.is_empty() {
        return Ok(());
    }
    let items: Vec<(String, &Value)> = ranges
        .iter()
        .flat_map(|r| {
            let name = r["metadata"]["name"].as_str().unwrap_or_default().to_string();
            r["spec"]["limits"].as_array().into_iter().flatten().map(move |item| (name.clone(), item))
        })
        .collect();
    let Some(value) = pod.value() else { return Ok(()) };
    let mut defaulted = value.clone();
    let mut changed = false;
    for (_, item) in items.iter().filter(|(_, i)| i["type"] == "Container") {
        for container in containers_mut(&mut defaulted) {
            // A container's own limit is its request (Kubernetes defaults
            // pods before LimitRanger sees them): only the rest default.
            let own_limits = container["resources"]["limits"].as_object().cloned().unwrap_or_default();
            changed |= set_defaults(container, "limits", &item["default"]);
            let mut requests = default_requests(item);
            if let Some(requests) = requests.as_object_mut() {
                requests.retain(|name, _| !own_limits.contains_key(name));
            }
            changed |= set_defaults(container, "requests", &requests);
        }
    }
    let pod_name = defaulted["metadata"]["name"].as_str().unwrap_or_default().to_string();
    for (range, item) in &items {
        let refusal = match item["type"].as_str() {
            Some("Container") => containers(&defaulted).find_map(|(i, c)| {
                check(item, &amounts(c, "requests"), &amounts(c, "limits"))
                    .map(|why| format!("{why} (spec.containers[{i}] {:?})", c["name"].as_str().unwrap_or_default()))
            }),
            Some("Pod") => {
                let (requests, limits) = pod_totals(&defaulted);
                check(item, &requests, &limits).map(|why| why.replace("per Container", "per Pod"))
            }
            _ => None,
        };
        if let Some(why) = refusal {
            return Err(Error::Forbidden(format!("pods {pod_name:?} is forbidden: {why}, by LimitRange {range:?}")));
        }
    }
    if changed {
        if let Some(value) = pod.value_mut() {
            *value = defaulted;
        }
    }
    Ok(())
}

fn containers(pod: &Value) -> impl Iterator<Item = (usize, &Value)> {
    pod["spec"]["containers"].as_array().into_iter().flatten().enumerate()
}

fn containers_mut(pod: &mut Value) -> impl Iterator<Item = &mut Value> {
    pod.get_mut("spec").and_then(|s| s.get_mut("containers")).and_then(Value::as_array_mut).into_iter().flatten()
}

/// An item's `defaultRequest`, each resource it leaves out taken from
/// `default`, as Kubernetes defaults a LimitRange.
fn default_requests(item: &Value) -> Value {
    let mut requests = item["default"].as_object().cloned().unwrap_or_default();
    for (name, q) in item["defaultRequest"].as_object().into_iter().flatten() {
        requests.insert(name.clone(), q.clone());
    }
    Value::Object(requests)
}

/// Sets `resources.<field>.<name>` from `defaults` where the container has
/// none; whether it set any.
fn set_defaults(container: &mut Value, field: &str, defaults: &Value) -> bool {
    let Some(defaults) = defaults.as_object().filter(|d| !d.is_empty()) else { return false };
    let Some(container) = container.as_object_mut() else { return false };
    let resources = container.entry("resources").or_insert_with(|| Value::Object(Map::new()));
    let Some(resources) = resources.as_object_mut() else { return false };
    let list = resources.entry(field).or_insert_with(|| Value::Object(Map::new()));
    let Some(list) = list.as_object_mut() else { return false };
    let mut set = false;
    for (name, q) in defaults {
        if !list.contains_key(name) {
            list.insert(name.clone(), q.clone());
            set = true;
        }
    }
    set
}

/// A container's `resources.<field>` in thousandths; requests left out
/// are the limits, as Kubernetes' defaulting makes them.
fn amounts(container: &Value, field: &str) -> Map<String, Value> {
    let mut out = container["resources"][field].as_object().cloned().unwrap_or_default();
    if field == "requests" {
        for (name, q) in container["resources"]["limits"].as_object().into_iter().flatten() {
            out.entry(name.clone()).or_insert_with(|| q.clone());
        }
    }
    out
}

/// The sums of the containers' requests and limits, for a `Pod` item.
fn pod_totals(pod: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let sum = |field: &str| {
        let mut totals: std::collections::BTreeMap<String, i128> = Default::default();
        for (_, c) in containers(pod) {
            for (name, q) in amounts(c, field) {
                let v = q.as_str().and_then(|q| parse_milli(q).ok()).unwrap_or(0);
                let e = totals.entry(name).or_insert(0);
                *e = e.saturating_add(v);
            }
        }
        totals.into_iter().map(|(k, v)| (k, Value::String(format!("{v}m")))).collect::<Map<_, _>>()
    };
    (sum("requests"), sum("limits"))
}

fn milli(q: &Value) -> Option<i128> {
    q.as_str().and_then(|q| parse_milli(q).ok())
}

/// Why `requests`/`limits` break `item`'s bounds, in Kubernetes' words.
fn check(item: &Value, requests: &Map<String, Value>, limits: &Map<String, Value>) -> Option<String> {
    for (name, min) in item["min"].as_object().into_iter().flatten() {
        let min_v = milli(min)?;
        match requests.get(name).and_then(milli) {
            None => {
                return Some(format!("minimum {name} usage per Container is {}. No request is specified", text(min)))
            }
            Some(r) if r < min_v => {
                return Some(format!(
                    "minimum {name} usage per Container is {}, but request is {}",
                    text(min),
                    text(&requests[name])
                ))
            }
            _ => {}
        }
    }
    for (name, max) in item["max"].as_object().into_iter().flatten() {
        let max_v = milli(max)?;
        match limits.get(name).and_then(milli) {
            None => return Some(format!("maximum {name} usage per Container is {}. No limit is specified", text(max))),
            Some(l) if l > max_v => {
                return Some(format!(
                    "maximum {name} usage per Container is {}, but limit is {}",
                    text(max),
                    text(&limits[name])
                ))
            }
            _ => {}
        }
    }
    for (name, ratio) in item["maxLimitRequestRatio"].as_object().into_iter().flatten() {
        let ratio_v = milli(ratio)?;
        let (Some(l), Some(r)) = (limits.get(name).and_then(milli), requests.get(name).and_then(milli)) else {
            continue;
        };
        if r > 0 && l.saturating_mul(1000) > ratio_v.saturating_mul(r) {
            return Some(format!(
                "{name} max limit to request ratio per Container is {}, but provided ratio is {:.3}",
                text(ratio),
                l as f64 / r as f64
            ));
        }
    }
    None
}

fn text(q: &Value) -> String {
    q.as_str().map_or_else(|| q.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(item: Value, container: Value) -> Option<String> {
        check(&item, &amounts(&container, "requests"), &amounts(&container, "limits"))
    }

    #[test]
    fn bounds_are_checked_as_kubernetes_words_them() {
        let item = json!({"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "4"}});
        let ok = json!({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}});
        assert_eq!(limits(item.clone(), ok), None);
        let big = json!({"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}});
        assert_eq!(limits(item.clone(), big).unwrap(), "maximum cpu usage per Container is 1, but limit is 2");
        let small = json!({"resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "100m"}}});
        assert_eq!(limits(item.clone(), small).unwrap(), "minimum cpu usage per Container is 100m, but request is 50m");
        let unbounded = json!({"resources": {"requests": {"cpu": "200m"}}});
        assert!(limits(item.clone(), unbounded).unwrap().contains("No limit is specified"));
        let skewed = json!({"resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}});
        assert!(limits(item, skewed).unwrap().contains("ratio per Container is 4"));
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let mut c = json!({"name": "a", "resources": {"limits": {"cpu": "2"}}});
        assert!(set_defaults(&mut c, "limits", &json!({"cpu": "1", "memory": "128Mi"})));
        assert_eq!(c["resources"]["limits"], json!({"cpu": "2", "memory": "128Mi"}));
        assert!(!set_defaults(&mut c, "limits", &json!({"cpu": "1"})), "nothing left to set");
        let mut bare = json!({"name": "b"});
        assert!(set_defaults(&mut bare, "requests", &json!({"cpu": "100m"})));
        assert_eq!(bare["resources"]["requests"]["cpu"], "100m");
    }
}
