//! Reading manifests: `-f FILE|DIR|-` into the documents they hold, in order.
//!
//! A file is multi-document YAML or JSON (one object, or a `kind: List` whose
//! items are applied one by one). A directory contributes its `*.yaml`,
//! `*.yml` and `*.json` files in name order. Syntax errors are fatal for the
//! whole run (nothing is applied from a manifest that doesn't parse); what a
//! single document means is checked later, per document, by the commands.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// One object read from a manifest, with where it came from for messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file it was read from (`-` for stdin).
    pub source: String,
    /// 1-based position among the documents of its source, empty ones included.
    pub index: usize,
    /// 1-based position within a `kind: List`, when it was one of its items.
    pub item: Option<usize>,
    pub object: Value,
}

impl Document {
    /// `document 2` or `document 1 item 3`.
    pub fn position(&self) -> String {
        match self.item {
            Some(item) => format!("document {} item {item}", self.index),
            None => format!("document {}", self.index),
        }
    }

    /// `Deployment web`, or what is there of it, for messages.
    pub fn describe(&self) -> String {
        let kind = skiff_api::meta::kind(&self.object);
        let name = skiff_api::meta::name(&self.object);
        match (kind.is_empty(), name.is_empty()) {
            (false, false) => format!("{kind} {name}"),
            (false, true) => kind.to_string(),
            (true, false) => format!("<no kind> {name}"),
            (true, true) => "<no kind>".to_string(),
        }
    }
}

impl fmt::Display for Document {
    /// `document 2 (Deployment web)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.position(), self.describe())
    }
}

/// Every document of every `-f` argument, in order.
pub fn read_all(args: &[String]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for arg in args {
        for (source, text) in read_source(arg)? {
            docs.extend(parse(&source, &text)?);
        }
    }
    Ok(docs)
}

/// The texts one `-f` argument names, each with its file name.
fn read_source(arg: &str) -> Result<Vec<(String, String)>> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading manifests from stdin")?;
        return Ok(vec![("-".to_string(), text)]);
    }
    let path = Path::new(arg);
    let files = if path.is_dir() { manifest_files(path)? } else { vec![path.to_path_buf()] };
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            Ok((file.display().to_string(), text))
        })
        .collect()
}

/// The manifests directly in `dir`, in name order.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading directory {}", dir.display()))?.path();
        let is_manifest = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The documents in one manifest's text. Empty documents are skipped (but
/// still counted, so that indexes match what an editor shows).
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>> {
    let values = if looks_like_json(source, text) { parse_json(source, text)? } else { parse_yaml(source, text)? };
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let index = i + 1;
        match value {
            Value::Null => {}
            Value::Object(_) if skiff_api::meta::kind(&value) == "List" => {
                let Some(items) = value.get("items").and_then(Value::as_array) else {
                    bail!("{source}: document {index}: a List needs an items array");
                };
                for (j, item) in items.iter().enumerate() {
                    if !item.is_object() {
                        bail!("{source}: document {index} item {}: not an object", j + 1);
                    }
                    docs.push(Document { source: source.into(), index, item: Some(j + 1), object: item.clone() });
                }
            }
            Value::Object(_) => docs.push(Document { source: source.into(), index, item: None, object: value }),
            other => bail!("{source}: document {index}: expected an object, found {}", type_name(&other)),
        }
    }
    Ok(docs)
}

fn looks_like_json(source: &str, text: &str) -> bool {
    source.ends_with(".json") || text.trim_start().starts_with('{')
}

fn parse_json(source: &str, text: &str) -> Result<Vec<Value>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text).with_context(|| format!("{source}: document 1: invalid JSON"))?;
    Ok(vec![value])
}

fn parse_yaml(source: &str, text: &str) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // The parser can't recover from a syntax error: stop at the first.
        let value = Value::deserialize(doc).with_context(|| format!("{source}: document {}: invalid YAML", i + 1))?;
        values.push(value);
    }
    Ok(values)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds_and_names(docs: &[Document]) -> Vec<(usize, String)> {
        docs.iter().map(|d| (d.index, d.describe())).collect()
    }

    #[test]
    fn reads_multi_document_yaml_skipping_empty_documents() {
        let text = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: demo\nspec:\n  replicas: 2\n";
        let docs = parse("app.yaml", text).unwrap();
        assert_eq!(kinds_and_names(&docs), vec![(1, "Namespace demo".to_string()), (4, "Deployment web".to_string())]);
        assert_eq!(docs[1].object["spec"]["replicas"], json!(2));
        assert_eq!(docs[1].source, "app.yaml");
        assert_eq!(docs[1].to_string(), "document 4 (Deployment web)");
    }

    #[test]
    fn empty_file_has_no_documents() {
        assert!(parse("a.yaml", "").unwrap().is_empty());
        assert!(parse("a.yaml", "---\n").unwrap().is_empty());
        assert!(parse("a.json", "  \n").unwrap().is_empty());
    }

    #[test]
    fn expands_json_list_items() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"b"}}]}"#;
        let docs = parse("list.json", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].describe(), "ConfigMap a");
        assert_eq!(docs[1].to_string(), "document 1 item 2 (Service b)");
        assert_eq!(docs[1].item, Some(2));
    }

    #[test]
    fn reads_a_single_json_object_from_stdin() {
        let docs = parse("-", r#" {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#).unwrap();
        assert_eq!(kinds_and_names(&docs), vec![(1, "Pod p".to_string())]);
    }

    #[test]
    fn malformed_yaml_names_the_document_and_line() {
        let text =
            "kind: ConfigMap\nmetadata:\n  name: ok\n---\nkind: Pod\nmetadata:\n  name: [unclosed\n  labels: {}\n";
        let err = format!("{:#}", parse("bad.yaml", text).unwrap_err());
        assert!(err.starts_with("bad.yaml: document 2: invalid YAML: "), "{err}");
        assert!(err.contains("line 8"), "{err}");
    }

    #[test]
    fn malformed_json_is_an_error() {
        let err = format!("{:#}", parse("x.json", "{\"kind\": ").unwrap_err());
        assert!(err.starts_with("x.json: document 1: invalid JSON: "), "{err}");
    }

    #[test]
    fn a_scalar_document_is_an_error() {
        let err = parse("a.yaml", "kind: ConfigMap\n---\njust a string\n").unwrap_err().to_string();
        assert_eq!(err, "a.yaml: document 2: expected an object, found a string");
    }

    #[test]
    fn directory_contributes_manifests_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yml"), "kind: Service\nmetadata: {name: b}\n").unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"kind":"ConfigMap","metadata":{"name":"a"}}"#).unwrap();
        std::fs::write(dir.path().join("c.yaml"), "kind: Pod\nmetadata: {name: c}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let docs = read_all(&[dir.path().display().to_string()]).unwrap();
        let names: Vec<_> = docs.iter().map(Document::describe).collect();
        assert_eq!(names, ["ConfigMap a", "Service b", "Pod c"]);
        assert!(docs[0].source.ends_with("a.json"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = format!("{:#}", read_all(&["/nonexistent/app.yaml".to_string()]).unwrap_err());
        assert!(err.starts_with("reading /nonexistent/app.yaml"), "{err}");
    }
}
