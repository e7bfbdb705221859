//! The rules that belong to one kind: a Namespace's `kubernetes`
//! finalizer in spec.finalizers, a bound Pod's graceful deletion, a Pod's
//! conditions. The verbs in the parent module call them; everything else
//! there applies to every kind alike.

use serde_json::Value;
use skiff_api::well_known::{
    JOB_CONTROLLER_UID_LABEL, JOB_NAME_LABEL, LEGACY_JOB_CONTROLLER_UID_LABEL, LEGACY_JOB_NAME_LABEL,
    NAMESPACE_FINALIZER,
};
use skiff_api::{clock, meta, KindInfo};

pub(super) fn add_namespace_finalizer(obj: &mut Value) {
    if !obj["spec"].is_object() {
        obj["spec"] = serde_json::json!({});
    }
    let finalizers = &mut obj["spec"]["finalizers"];
    if !finalizers.is_array() {
        *finalizers = Value::Array(Vec::new());
    }
    let list = finalizers.as_array_mut().expect("just made an array");
    if !list.iter().any(|f| f == NAMESPACE_FINALIZER) {
        list.push(NAMESPACE_FINALIZER.into());
    }
}

/// Copies a Namespace's spec.finalizers from `current` to `next`. Update and
/// Patch keep them as they were, as in Kubernetes; UpdateStatus takes them
/// from the request, so the namespace controller can clear them.
pub(super) fn keep_namespace_finalizers(info: &KindInfo, current: &Value, next: &mut Value) {
    if info.kind != "Namespace" {
        return;
    }
    match current.pointer("/spec/finalizers") {
        Some(f) => {
            if !next["spec"].is_object() {
                next["spec"] = serde_json::json!({});
            }
            next["spec"]["finalizers"] = f.clone();
        }
        None => {
            if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
        }
    }
}

/// Whether a deleting object is a bound Pod whose kubelet has not yet
/// deleted it for good (deletionGracePeriodSeconds still above 0): the
/// update that removes its last finalizer must not delete it.
pub(super) fn awaits_kubelet(info: &KindInfo, obj: &Value) -> bool {
    let grace = obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
    info.kind == "Pod" && is_bound(obj) && grace > 0
}

/// Whether a Pod is bound to a node (spec.nodeName set).
fn is_bound(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
}

/// A pod's terminationGracePeriodSeconds (Kubernetes' default 30).
pub(super) fn termination_grace(pod: &Value) -> i64 {
    pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30).max(0)
}

/// Whether anything still holds the object back from deletion: its
/// metadata.finalizers, and for a Namespace also spec.finalizers.
pub(super) fn has_finalizers(info: &KindInfo, obj: &Value) -> bool {
    let spec_finalizers = info.kind == "Namespace"
        && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    spec_finalizers || !meta::finalizers(obj).is_empty()
}

/// Sets one entry of status.conditions, keeping the others.
pub(super) fn set_condition(obj: &mut Value, type_: &str, status: &str, reason: &str, message: &str) {
    let mut condition =
        serde_json::json!({"type": type_, "status": status, "lastTransitionTime": clock::now_rfc3339()});
    if !reason.is_empty() {
        condition["reason"] = reason.into();
    }
    if !message.is_empty() {
        condition["message"] = message.into();
    }
    if !obj["status"].is_object() {
        obj["status"] = serde_json::json!({});
    }
    let conditions = &mut obj["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = Value::Array(Vec::new());
    }
    let list = conditions.as_array_mut().expect("just made an array");
    list.retain(|c| c["type"] != type_);
    list.push(condition);
}

/// A new Job without `spec.manualSelector: true` gets its selector from the
/// apiserver, as in Kubernetes: its own uid, put on the pod template's
/// labels as well (with the Job's name), so two Jobs never share pods.
/// A selector the Job brings along without asking for a manual one is
/// refused, as Kubernetes refuses it.
pub(super) fn generate_job_selector(info: &KindInfo, job: &mut Value) -> Result<(), skiff_api::Error> {
    if info.kind != "Job" || job.pointer("/spec/manualSelector") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if spec.get("selector").is_some_and(|s| !s.is_null()) {
        return Err(skiff_api::Error::field(
            "spec.selector",
            "`selector` will be auto-generated: set spec.manualSelector to true to give your own",
        ));
    }
    let uid = meta::str_field(job, "uid").to_string();
    let name = meta::name(job).to_string();
    job["spec"]["selector"] = serde_json::json!({"matchLabels": {JOB_CONTROLLER_UID_LABEL: uid}});
    let template = &mut job["spec"]["template"];
    if !template.is_object() {
        return Ok(());
    }
    if !template["metadata"].is_object() {
        template["metadata"] = serde_json::json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = serde_json::json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    for (label, value) in [
        (JOB_CONTROLLER_UID_LABEL, &uid),
        (LEGACY_JOB_CONTROLLER_UID_LABEL, &uid),
        (JOB_NAME_LABEL, &name),
        (LEGACY_JOB_NAME_LABEL, &name),
    ] {
        labels[label] = value.as_str().into();
    }
    Ok(())
}

/// Fields that may not change once an object exists, by kind: a workload's
/// selector (its controller would lose its pods), and a Job's template and
/// completion mode (its pods are already made from them).
const IMMUTABLE: &[(&str, &[&str])] = &[
    ("Deployment", &["/spec/selector"]),
    ("ReplicaSet", &["/spec/selector"]),
    ("DaemonSet", &["/spec/selector"]),
    (
        "StatefulSet",
        &["/spec/selector", "/spec/serviceName", "/spec/volumeClaimTemplates", "/spec/podManagementPolicy"],
    ),
    ("Job", &["/spec/selector", "/spec/template", "/spec/completionMode", "/spec/manualSelector"]),
];

/// Refuses an update that changes an immutable field, naming it.
pub(super) fn check_immutable(info: &KindInfo, current: &Value, next: &Value) -> Result<(), skiff_api::Error> {
    let Some((_, fields)) = IMMUTABLE.iter().find(|(kind, _)| *kind == info.kind) else {
        return Ok(());
    };
    for pointer in *fields {
        if current.pointer(pointer) != next.pointer(pointer) {
            let field = pointer.trim_start_matches('/').replace('/', ".");
            return Err(skiff_api::Error::field(field, "field is immutable"));
        }
    }
    Ok(())
}
