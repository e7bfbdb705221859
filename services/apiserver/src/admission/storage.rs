//! PersistentVolumeClaim admission: a claim without `storageClassName`
//! gets the default StorageClass (the one annotated
//! `storageclass.kubernetes.io/is-default-class: "true"`), as Kubernetes'
//! DefaultStorageClass plugin does; a claim naming a class that does not
//! exist is refused with the field named, rather than left pending for
//! good. `""` asks for no class: only pre-made volumes without one.

use serde_json::Value;
use skiff_api::well_known::DEFAULT_STORAGE_CLASS_ANNOTATION;

use super::Admitted;
use crate::registry::Registry;
use crate::Error;

pub async fn admit_claim(registry: &Registry, claim: &mut Admitted<'_>) -> Result<(), Error> {
    let Some(value) = claim.value() else { return Ok(()) };
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let classes = registry.cached_in_namespace("StorageClass", "").await?;
    match value.pointer("/spec/storageClassName") {
        Some(Value::String(class)) if class.is_empty() => Ok(()),
        Some(Value::String(class)) => {
            if classes.iter().any(|c| c["metadata"]["name"] == class.as_str()) {
                return Ok(());
            }
            let source = skiff_api::Error::field("spec.storageClassName", format!("storage class {class:?} not found"));
            Err(Error::Invalid { kind: "PersistentVolumeClaim", name, source })
        }
        _ => {
            let default = classes.iter().find(|c| {
                c.pointer("/metadata/annotations").and_then(|a| a.get(DEFAULT_STORAGE_CLASS_ANNOTATION))
                    == Some(&Value::from("true"))
            });
            let Some(class) = default.and_then(|c| c["metadata"]["name"].as_str()).map(str::to_string) else {
                return Ok(());
            };
            if let Some(spec) = claim.value_mut().and_then(|v| v.get_mut("spec")).and_then(Value::as_object_mut) {
                spec.insert("storageClassName".into(), class.into());
            }
            Ok(())
        }
    }
}
