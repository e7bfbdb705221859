//! Subresources kubectl reaches by URL: scale, binding, eviction, log,
//! token, and the access reviews.

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, Method, StatusCode};
use serde_json::{json, Value};
use skiff_api::proto::objects_server::Objects;
use skiff_api::proto::pod_proxy_server::PodProxy;
use skiff_api::proto::{AccessReviewRequest, BindRequest, GetRequest, LogsRequest, PatchType, TokenRequest};

use super::objects::DeleteOptions;
use super::path::Target;
use super::status::{self, Failure};
use super::{internal, json_reply, parse_json, typed_body, value_reply, Call, Reply, Rest};

impl Rest {
    pub(super) async fn scale(&self, call: &Call, t: &Target, method: &Method, body: Bytes) -> Reply {
        let object = if method == Method::GET {
            let request =
                GetRequest { kind: t.info.kind.into(), namespace: t.namespace.clone(), name: self.name(t).into() };
            self.objects
                .get(call.grpc(request))
                .await
                .map_err(|s| Failure::from_status(&s, Some(t)))?
                .into_inner()
                .object
        } else {
            let body = parse_json(&body, call.header(header::CONTENT_TYPE))?;
            let replicas = requested_replicas(&body)
                .ok_or_else(|| Failure::bad_request("the Scale must set spec.replicas to a number"))?;
            let patch = Bytes::from(json!({"spec": {"replicas": replicas}}).to_string());
            self.patch_object(call, t, patch, PatchType::Merge).await?
        };
        let object: Value = serde_json::from_slice(&object).map_err(internal)?;
        Ok(value_reply(StatusCode::OK, &scale_of(&object)))
    }

    pub(super) async fn bind(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let binding = parse_json(&body, call.header(header::CONTENT_TYPE))?;
        let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or_default();
        if node.is_empty() {
            return Err(Failure::bad_request("target.name: Required value: the node to bind to"));
        }
        let request = BindRequest {
            namespace: t.namespace.clone(),
            name: self.name(t).into(),
            node_name: node.into(),
            uid: binding.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().into(),
        };
        self.objects.bind(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        Ok(value_reply(StatusCode::CREATED, &status::success(t)))
    }

    /// An Eviction deletes the pod gracefully (no PodDisruptionBudgets are
    /// served, so none can refuse it).
    pub(super) async fn evict(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let eviction = typed_body(call, &body, "Eviction")?;
        let options = eviction.get("deleteOptions").map(|o| o.to_string().into_bytes()).unwrap_or_default();
        let options = DeleteOptions::read(call, &Bytes::from(options))?;
        self.delete_one(call, t, self.name(t), &options).await?;
        Ok(value_reply(StatusCode::CREATED, &status::success(t)))
    }

    pub(super) async fn logs(&self, call: &Call, t: &Target) -> Reply {
        let tail_lines = match call.param("tailLines") {
            "" => None,
            n => Some(n.parse().map_err(|_| Failure::bad_request(format!("tailLines: {n:?} is not a number")))?),
        };
        let request = LogsRequest {
            namespace: t.namespace.clone(),
            pod: self.name(t).into(),
            container: call.param("container").into(),
            follow: call.flag("follow"),
            previous: call.flag("previous"),
            tail_lines,
            timestamps: call.flag("timestamps"),
        };
        let chunks = self.pods.logs(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        let body = chunks.into_inner().map(|chunk| chunk.map(|c| c.data));
        Ok(json_reply(StatusCode::OK, Body::from_stream(body), "text/plain"))
    }

    pub(super) async fn token(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let mut review = typed_body(call, &body, "TokenRequest")?;
        let spec = review.get("spec").cloned().unwrap_or_default();
        let audiences =
            spec["audiences"].as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect());
        let bound_pod = spec.pointer("/boundObjectRef/kind").and_then(Value::as_str) == Some("Pod");
        let field = |pointer: &str| spec.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
        let request = TokenRequest {
            namespace: t.namespace.clone(),
            service_account: self.name(t).into(),
            audiences: audiences.unwrap_or_default(),
            expiration_seconds: spec["expirationSeconds"].as_i64().unwrap_or(0),
            pod_name: if bound_pod { field("/boundObjectRef/name") } else { String::new() },
            pod_uid: if bound_pod { field("/boundObjectRef/uid") } else { String::new() },
        };
        let token =
            self.objects.create_token(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        let token = token.into_inner();
        let expires = chrono::DateTime::from_timestamp(token.expiration_timestamp, 0).unwrap_or_default();
        review["apiVersion"] = "authentication.k8s.io/v1".into();
        review["kind"] = "TokenRequest".into();
        review["status"] = json!({
            "token": token.token,
            "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        Ok(value_reply(StatusCode::CREATED, &review))
    }

    /// SelfSubjectAccessReview (`kubectl auth can-i`) and SubjectAccessReview.
    pub(super) async fn access_review(&self, call: &Call, about_self: bool, body: Bytes) -> Reply {
        let kind = if about_self { "SelfSubjectAccessReview" } else { "SubjectAccessReview" };
        let mut review = typed_body(call, &body, kind)?;
        review["apiVersion"] = "authorization.k8s.io/v1".into();
        review["kind"] = kind.into();
        let attributes = review.pointer("/spec/resourceAttributes").cloned().unwrap_or_default();
        let field = |name: &str| attributes.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let resource = field("resource");
        let kind = skiff_api::KINDS
            .iter()
            .find(|k| k.plural == resource && (k.group() == field("group") || resource == "*"))
            .map_or(resource.clone(), |k| k.kind.to_string());
        let (user, groups) = if about_self {
            (String::new(), Vec::new())
        } else {
            let spec = review.get("spec").cloned().unwrap_or_default();
            let groups =
                spec["groups"].as_array().map(|g| g.iter().filter_map(Value::as_str).map(str::to_string).collect());
            (spec["user"].as_str().unwrap_or_default().to_string(), groups.unwrap_or_default())
        };
        let request = AccessReviewRequest {
            verb: field("verb"),
            kind,
            subresource: field("subresource"),
            namespace: field("namespace"),
            name: field("name"),
            user,
            groups,
        };
        let reply = self.objects.review_access(call.grpc(request)).await;
        let reply = reply.map_err(|s| Failure::from_status(&s, None))?.into_inner();
        review["status"] = json!({"allowed": reply.allowed, "reason": reply.reason});
        Ok(value_reply(StatusCode::CREATED, &review))
    }
}

/// spec.replicas from a Scale (PUT), or from a merge, strategic merge or
/// JSON patch of one (PATCH).
fn requested_replicas(body: &Value) -> Option<i64> {
    match body {
        Value::Array(operations) => operations
            .iter()
            .rev()
            .find(|op| op["path"] == "/spec/replicas" && matches!(op["op"].as_str(), Some("replace" | "add")))
            .and_then(|op| op["value"].as_i64()),
        _ => body.pointer("/spec/replicas").and_then(Value::as_i64),
    }
}

/// The autoscaling/v1 Scale of a Deployment, ReplicaSet or StatefulSet.
fn scale_of(object: &Value) -> Value {
    let metadata = &object["metadata"];
    let keep = ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"];
    let metadata: serde_json::Map<String, Value> =
        keep.iter().filter_map(|k| Some((k.to_string(), metadata.get(*k)?.clone()))).collect();
    let selector = skiff_api::columns::selector(object.pointer("/spec/selector"));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": if selector == "<none>" { String::new() } else { selector },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_from_any_scale_patch() {
        assert_eq!(requested_replicas(&json!({"spec": {"replicas": 3}})), Some(3));
        assert_eq!(requested_replicas(&json!([{"op": "replace", "path": "/spec/replicas", "value": 5}])), Some(5));
        assert_eq!(requested_replicas(&json!({"spec": {}})), None);
    }

    #[test]
    fn scale_reads_the_object() {
        let deployment = json!({"metadata": {"name": "web", "namespace": "default", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let scale = scale_of(&deployment);
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"], json!({"replicas": 2, "selector": "app=web"}));
        assert!(scale["metadata"].get("labels").is_none());
    }
}
