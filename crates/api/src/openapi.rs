//! OpenAPI v3 documents of the served kinds, one per group/version, as
//! kube-apiserver publishes under `/openapi/v3`: the schemas are the
//! k8s-openapi types' own (with their field descriptions, so `kubectl
//! explain` reads them), each kind's marked with its group/version/kind,
//! each list field that strategic merge patch merges marked with its merge
//! key (`crate::patch` is the one table of those), and the paths say which
//! query parameters each verb takes — `fieldValidation` among them, which
//! tells kubectl the server checks fields itself.

use std::collections::HashMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};

use crate::admission::{visit_kind, KindVisitor, Rules};
use crate::kinds::group_versions;
use crate::patch::{list_merge, ListMerge};
use crate::{KindInfo, KINDS};

const SCHEMAS: &str = "#/components/schemas/";

/// Where a group/version's document is listed: `api/v1`, `apis/apps/v1`.
pub fn document_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every group/version's document, by [`document_path`].
pub fn documents() -> Vec<(String, Value)> {
    group_versions().into_iter().filter_map(|(g, v)| Some((document_path(g, v), document(g, v)?))).collect()
}

struct SchemaOf<'a>(&'a mut SchemaGenerator);

impl KindVisitor for SchemaOf<'_> {
    type Output = String;
    fn visit<K: Rules + schemars::JsonSchema>(self) -> String {
        self.0.subschema_for::<K>();
        K::schema_name().into_owned()
    }
}

/// The document of one group/version, None if nothing is served there.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&'static KindInfo> = KINDS.iter().filter(|k| k.group_version() == (group, version)).collect();
    if kinds.is_empty() {
        return None;
    }
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut named = Vec::new();
    for info in kinds {
        let Some(schema) = visit_kind(info.kind, SchemaOf(&mut generator)) else { continue };
        paths.extend(kind_paths(info, &schema));
        named.push((info, schema));
    }
    let mut schemas = generator.take_definitions(true);
    for (info, schema) in named {
        if let Some(definition) = schemas.get_mut(&schema) {
            definition["x-kubernetes-group-version-kind"] =
                json!([{"group": group, "version": version, "kind": info.kind}]);
        }
    }
    add_patch_extensions(&mut schemas);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The definition a property refers to: `$ref`, a list's items, a map's
/// values, or the one `allOf` a described reference becomes.
fn referenced(property: &Value) -> Option<&str> {
    let reference = property
        .get("$ref")
        .or_else(|| property.pointer("/items/$ref"))
        .or_else(|| property.pointer("/additionalProperties/$ref"))
        .or_else(|| property.pointer("/allOf/0/$ref"))?;
    reference.as_str()?.strip_prefix(SCHEMAS)
}

/// Marks each list field that strategic merge patch merges (rather than
/// replaces) as Kubernetes' schemas do, so clients computing patches from
/// the schema (`kubectl apply`) agree with the server. The table is keyed
/// by field name and the field name leading to the enclosing object, so
/// each definition is looked up under every field name that refers to it.
fn add_patch_extensions(schemas: &mut Map<String, Value>) {
    let mut reached_by: HashMap<String, Vec<String>> = HashMap::new();
    for definition in schemas.values() {
        let Some(properties) = definition.get("properties").and_then(Value::as_object) else { continue };
        for (field, property) in properties {
            if let Some(target) = referenced(property) {
                reached_by.entry(target.to_string()).or_default().push(field.clone());
            }
        }
    }
    for (name, definition) in schemas.iter_mut() {
        let parents = reached_by.get(name).cloned().unwrap_or_else(|| vec![String::new()]);
        let Some(properties) = definition.get_mut("properties").and_then(Value::as_object_mut) else { continue };
        for (field, property) in properties.iter_mut() {
            if property.get("type").and_then(Value::as_str) != Some("array") {
                continue;
            }
            let strategy = parents.iter().map(|p| list_merge(p, field)).find(|s| *s != ListMerge::Replace);
            match strategy {
                Some(ListMerge::ByKey(key)) => {
                    property["x-kubernetes-patch-merge-key"] = key.into();
                    property["x-kubernetes-patch-strategy"] = "merge".into();
                }
                Some(ListMerge::Set) => property["x-kubernetes-patch-strategy"] = "merge".into(),
                _ => {}
            }
        }
    }
}

/// The paths of one kind: its collection and its objects, each verb with
/// the query parameters the REST front takes.
fn kind_paths(info: &KindInfo, schema: &str) -> Map<String, Value> {
    let (group, version) = info.group_version();
    let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    let scope = if info.namespaced { "/namespaces/{namespace}" } else { "" };
    let gvk = json!({"group": group, "version": version, "kind": info.kind});
    let operation = |action: &str, parameters: &[&str]| {
        let parameters: Vec<Value> =
            parameters.iter().map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}})).collect();
        json!({
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": parameters,
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": format!("{SCHEMAS}{schema}")}
            }}}},
        })
    };
    let writes = ["dryRun", "fieldManager", "fieldValidation"];
    let mut paths = Map::new();
    paths.insert(
        format!("{prefix}{scope}/{}", info.plural),
        json!({
            "get": operation("list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds"]),
            "post": operation("post", &writes),
            "delete": operation("deletecollection", &["labelSelector", "fieldSelector", "gracePeriodSeconds", "propagationPolicy"]),
        }),
    );
    paths.insert(
        format!("{prefix}{scope}/{}/{{name}}", info.plural),
        json!({
            "get": operation("get", &[]),
            "put": operation("put", &writes),
            "patch": operation("patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
            "delete": operation("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        }),
    );
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_v1_describes_deployments_for_explain_and_patches() {
        let doc = document("apps", "v1").unwrap();
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(deployment["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        assert!(deployment["description"].as_str().unwrap().contains("declarative updates"));
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name", "{containers}");
        let ports = &schemas["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        let args = &schemas["io.k8s.api.core.v1.Container"]["properties"]["args"];
        assert!(args.get("x-kubernetes-patch-strategy").is_none(), "args are replaced whole");
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
    }

    #[test]
    fn every_group_version_has_a_document() {
        let docs = documents();
        assert_eq!(docs.len(), group_versions().len());
        let core = &docs.iter().find(|(path, _)| path == "api/v1").unwrap().1;
        assert_eq!(
            core["components"]["schemas"]["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"]
                ["x-kubernetes-patch-merge-key"],
            "port"
        );
        assert!(core["paths"].get("/api/v1/nodes/{name}").is_some());
        assert!(document("apps", "v9").is_none());
    }
}
