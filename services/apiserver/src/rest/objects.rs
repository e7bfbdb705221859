//! The verbs on objects and collections: get, list, watch, create,
//! update, patch, delete and deletecollection, each the gRPC API's call.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, StatusCode};
use serde_json::{json, Value};
use skiff_api::proto::objects_server::Objects;
use skiff_api::proto::{
    watch_event::Type as EventType, CreateRequest, DeleteRequest, GetRequest, ListRequest, PatchRequest, PatchType,
    UpdateRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::path::Target;
use super::status::{self, Failure};
use super::table::{self, Include};
use super::{internal, json_reply, parse_json, protobuf, value_reply, Call, Reply, Rest};

/// How long a watch runs without `timeoutSeconds`: kube-apiserver's
/// default minimum request timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

impl Rest {
    pub(super) fn name<'t>(&self, t: &'t Target) -> &'t str {
        t.name.as_deref().unwrap_or_default()
    }

    /// The object as the response to a read: JSON, or a one-row Table.
    pub(super) fn object_reply(&self, call: &Call, t: &Target, code: StatusCode, object: Bytes) -> Reply {
        match call.table() {
            Some(include) => {
                let value: Value = serde_json::from_slice(&object).map_err(internal)?;
                let rv = skiff_api::meta::resource_version(&value).to_string();
                Ok(value_reply(code, &table::table(t.info, vec![value], &rv, "", include)))
            }
            None => Ok(json_reply(code, object, "application/json")),
        }
    }

    pub(super) async fn get(&self, call: &Call, t: &Target) -> Reply {
        let request =
            GetRequest { kind: t.info.kind.into(), namespace: t.namespace.clone(), name: self.name(t).into() };
        let reply = self.objects.get(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        self.object_reply(call, t, StatusCode::OK, reply.into_inner().object)
    }

    pub(super) fn list_request(&self, call: &Call, t: &Target) -> Result<ListRequest, Failure> {
        let limit = match call.param("limit") {
            "" => 0,
            n => n.parse::<i64>().map_err(|_| Failure::bad_request(format!("limit: {n:?} is not a number")))?,
        };
        Ok(ListRequest {
            kind: t.info.kind.into(),
            namespace: t.namespace.clone(),
            label_selector: call.param("labelSelector").into(),
            field_selector: call.param("fieldSelector").into(),
            limit,
            continue_token: call.param("continue").into(),
            resource_version: call.param("resourceVersion").into(),
            resource_version_match: call.param("resourceVersionMatch").into(),
        })
    }

    pub(super) async fn list(&self, call: &Call, t: &Target) -> Reply {
        let request = self.list_request(call, t)?;
        let reply = self.objects.list(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        let reply = reply.into_inner();
        if let Some(include) = call.table() {
            let items = reply.items.iter().map(|i| serde_json::from_slice(i)).collect::<Result<Vec<Value>, _>>();
            let table =
                table::table(t.info, items.map_err(internal)?, &reply.resource_version, &reply.continue_token, include);
            return Ok(value_reply(StatusCode::OK, &table));
        }
        // The items are stored JSON already: framed, not re-encoded.
        let mut metadata = json!({"resourceVersion": reply.resource_version});
        if !reply.continue_token.is_empty() {
            metadata["continue"] = reply.continue_token.into();
        }
        let mut out = format!(
            r#"{{"kind":"{}","apiVersion":"{}","metadata":{},"items":["#,
            t.info.list_kind(),
            t.info.api_version,
            metadata
        )
        .into_bytes();
        for (i, item) in reply.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"]}");
        Ok(json_reply(StatusCode::OK, out, "application/json"))
    }

    pub(super) async fn create(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let object = self.normalized_body(call, &body)?;
        let request =
            CreateRequest { kind: t.info.kind.into(), namespace: t.namespace.clone(), object, dry_run: dry_run(call)? };
        // A refusal names the object the body meant to create.
        let name = serde_json::from_slice::<Value>(&request.object).ok().map(|o| skiff_api::meta::name(&o).to_string());
        let named =
            Target { info: t.info, namespace: t.namespace.clone(), name, subresource: None, tail: String::new() };
        let reply =
            self.objects.create(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(&named)))?;
        Ok(json_reply(StatusCode::CREATED, reply.into_inner().object, "application/json"))
    }

    /// A JSON body as bytes, YAML bodies turned into JSON.
    pub(super) fn normalized_body(&self, call: &Call, body: &Bytes) -> Result<Bytes, Failure> {
        let content_type = call.header(header::CONTENT_TYPE);
        if content_type.starts_with("application/yaml") {
            return Ok(parse_json(body, content_type)?.to_string().into());
        }
        if content_type.starts_with(protobuf::CONTENT_TYPE) {
            let object = protobuf::decode(body).map_err(|e| Failure::bad_request(format!("the body: {e}")))?;
            return Ok(object.to_string().into());
        }
        Ok(body.clone())
    }

    pub(super) async fn update(&self, call: &Call, t: &Target, body: Bytes, status: bool) -> Reply {
        let object = self.normalized_body(call, &body)?;
        let named: Value = parse_json(&object, "application/json")?;
        let name = skiff_api::meta::name(&named);
        if name != self.name(t) {
            return Err(Failure::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                self.name(t)
            )));
        }
        let request =
            UpdateRequest { kind: t.info.kind.into(), namespace: t.namespace.clone(), object, dry_run: dry_run(call)? };
        let reply = if status {
            self.objects.update_status(call.grpc(request)).await
        } else {
            self.objects.update(call.grpc(request)).await
        };
        let reply = reply.map_err(|s| Failure::from_status(&s, Some(t)))?;
        Ok(json_reply(StatusCode::OK, reply.into_inner().object, "application/json"))
    }

    pub(super) async fn patch(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let patch_type = patch_type(call.header(header::CONTENT_TYPE))?;
        // An applied configuration may be YAML; the API takes it as JSON.
        let body = match patch_type {
            PatchType::Apply => Bytes::from(parse_json(&body, "application/apply-patch+yaml")?.to_string()),
            _ => body,
        };
        let object = self.patch_object(call, t, body, patch_type).await?;
        Ok(json_reply(StatusCode::OK, object, "application/json"))
    }

    pub(super) async fn patch_object(
        &self,
        call: &Call,
        t: &Target,
        patch: Bytes,
        patch_type: PatchType,
    ) -> Result<Bytes, Failure> {
        let request = PatchRequest {
            kind: t.info.kind.into(),
            namespace: t.namespace.clone(),
            name: self.name(t).into(),
            patch,
            patch_type: patch_type.into(),
            dry_run: dry_run(call)?,
            field_manager: call.param("fieldManager").into(),
            force: call.flag("force"),
        };
        let reply = self.objects.patch(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        Ok(reply.into_inner().object)
    }

    pub(super) async fn delete(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let options = DeleteOptions::read(call, &body)?;
        let object = self.delete_one(call, t, self.name(t), &options).await?;
        Ok(json_reply(StatusCode::OK, object, "application/json"))
    }

    pub(super) async fn delete_one(
        &self,
        call: &Call,
        t: &Target,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Bytes, Failure> {
        let request = DeleteRequest {
            kind: t.info.kind.into(),
            namespace: t.namespace.clone(),
            name: name.into(),
            resource_version: options.resource_version.clone(),
            grace_period_seconds: options.grace_period_seconds,
            propagation_policy: options.propagation_policy.clone(),
            dry_run: options.dry_run,
        };
        let reply = self.objects.delete(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        Ok(reply.into_inner().object)
    }

    /// Deletes what a list with the same selectors would show, one object
    /// at a time, each through the delete path (and its authorization).
    pub(super) async fn delete_collection(&self, call: &Call, t: &Target) -> Reply {
        let options = DeleteOptions::read(call, &Bytes::new())?;
        let mut request = self.list_request(call, t)?;
        request.limit = 0;
        let reply = self.objects.list(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        for item in reply.into_inner().items {
            let item: Value = serde_json::from_slice(&item).map_err(internal)?;
            let namespace = skiff_api::meta::namespace(&item).to_string();
            let target = Target { info: t.info, namespace, name: None, subresource: None, tail: String::new() };
            match self.delete_one(call, &target, skiff_api::meta::name(&item), &options).await {
                Ok(_) => {}
                Err(f) if f.code == StatusCode::NOT_FOUND => {}
                Err(f) => return Err(f),
            }
        }
        Ok(value_reply(StatusCode::OK, &status::success(t)))
    }

    pub(super) async fn watch(&self, call: &Call, t: &Target) -> Reply {
        let timeout = match call.param("timeoutSeconds") {
            "" => DEFAULT_WATCH_TIMEOUT,
            s => Duration::from_secs(
                s.parse().map_err(|_| Failure::bad_request(format!("timeoutSeconds: {s:?} is not a number")))?,
            ),
        };
        let bookmarks = call.flag("allowWatchBookmarks");
        let table = call.table();
        let mut rv = call.param("resourceVersion").to_string();
        let send_initial = call.flag("sendInitialEvents");
        let mut initial = Vec::new();
        // No version (or "0"): the state first, as synthetic ADDED events,
        // then the changes after it, as Kubernetes does.
        if rv.is_empty() || rv == "0" || send_initial {
            let mut request = self.list_request(call, t)?;
            request.limit = 0;
            request.continue_token.clear();
            let reply = self.objects.list(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
            let reply = reply.into_inner();
            for item in reply.items {
                initial.extend(frame(t, table, "ADDED", &item)?);
            }
            if send_initial && bookmarks {
                let end = json!({"kind": t.info.kind, "apiVersion": t.info.api_version, "metadata": {
                    "resourceVersion": reply.resource_version,
                    "annotations": {"k8s.io/initial-events-end": "true"},
                }});
                initial.extend(frame(t, None, "BOOKMARK", end.to_string().as_bytes())?);
            }
            rv = reply.resource_version;
        }
        let request = WatchRequest {
            kind: t.info.kind.into(),
            namespace: t.namespace.clone(),
            label_selector: call.param("labelSelector").into(),
            field_selector: call.param("fieldSelector").into(),
            resource_version: rv,
        };
        let events = self.objects.watch(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        let info = t.info;
        let body = watch_body(initial, events.into_inner(), timeout, move |event| {
            let target = Target { info, namespace: String::new(), name: None, subresource: None, tail: String::new() };
            let kind = match EventType::try_from(event.r#type) {
                Ok(EventType::Added) => "ADDED",
                Ok(EventType::Modified) => "MODIFIED",
                Ok(EventType::Deleted) => "DELETED",
                Ok(EventType::Bookmark) if bookmarks && table.is_none() => {
                    let object = json!({"kind": info.kind, "apiVersion": info.api_version,
                        "metadata": {"resourceVersion": event.resource_version}});
                    return frame(&target, None, "BOOKMARK", object.to_string().as_bytes()).ok();
                }
                _ => return None,
            };
            frame(&target, table, kind, &event.object).ok()
        });
        Ok(json_reply(StatusCode::OK, body, "application/json"))
    }
}

/// `?dryRun=All`: validate and admit, store nothing.
pub(super) fn dry_run(call: &Call) -> Result<bool, Failure> {
    match call.param("dryRun") {
        "" => Ok(false),
        "All" => Ok(true),
        other => Err(Failure::bad_request(format!("dryRun: {other:?} is not supported; the one value is All"))),
    }
}

fn patch_type(content_type: &str) -> Result<PatchType, Failure> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({other:?}); accepted: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"),
        )),
    }
}

/// What a delete asks for, from its DeleteOptions body and query.
pub(super) struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    resource_version: String,
    propagation_policy: String,
    dry_run: bool,
}

impl DeleteOptions {
    pub(super) fn read(call: &Call, body: &Bytes) -> Result<DeleteOptions, Failure> {
        let options: Value =
            if body.iter().all(u8::is_ascii_whitespace) { Value::Null } else { parse_json(body, "application/json")? };
        let grace = match (options.get("gracePeriodSeconds").and_then(Value::as_i64), call.param("gracePeriodSeconds"))
        {
            (Some(g), _) => Some(g),
            (None, "") => None,
            (None, g) => Some(
                g.parse().map_err(|_| Failure::bad_request(format!("gracePeriodSeconds: {g:?} is not a number")))?,
            ),
        };
        let policy =
            options.get("propagationPolicy").and_then(Value::as_str).unwrap_or(call.param("propagationPolicy"));
        if !matches!(policy, "" | "Foreground" | "Background" | "Orphan") {
            return Err(Failure::bad_request(format!(
                "propagationPolicy: {policy:?} is not Foreground, Background or Orphan"
            )));
        }
        Ok(DeleteOptions {
            grace_period_seconds: grace,
            resource_version: options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            propagation_policy: policy.into(),
            dry_run: dry_run(call)? || options["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All")),
        })
    }
}

/// One watch event as a line: `{"type":…,"object":…}`, the object's bytes
/// as stored (or a one-row Table of it).
fn frame(t: &Target, table: Option<Include>, kind: &str, object: &[u8]) -> Result<Vec<u8>, Failure> {
    let mut line = format!(r#"{{"type":"{kind}","object":"#).into_bytes();
    match table {
        Some(include) => {
            let value: Value = serde_json::from_slice(object).map_err(internal)?;
            let rv = skiff_api::meta::resource_version(&value).to_string();
            line.extend(table::table(t.info, vec![value], &rv, "", include).to_string().into_bytes());
        }
        None => line.extend_from_slice(object),
    }
    line.extend_from_slice(b"}\n");
    Ok(line)
}

/// A watch's body: the initial lines, then each event `framed`, until the
/// watch ends, fails (an ERROR event carrying the Status), or times out.
fn watch_body(
    initial: Vec<u8>,
    mut events: impl Stream<Item = Result<skiff_api::proto::WatchEvent, tonic::Status>> + Unpin + Send + 'static,
    timeout: Duration,
    framed: impl Fn(skiff_api::proto::WatchEvent) -> Option<Vec<u8>> + Send + 'static,
) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        if !initial.is_empty() && tx.send(Ok(initial.into())).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                event = events.next() => event,
            };
            let line = match event {
                None => return,
                Some(Ok(event)) => match framed(event) {
                    Some(line) => line,
                    None => continue,
                },
                Some(Err(status)) => {
                    let failure = Failure::from_status(&status, None);
                    let line = format!("{{\"type\":\"ERROR\",\"object\":{}}}\n", failure.body);
                    let _ = tx.send(Ok(line.into())).await;
                    return;
                }
            };
            if tx.send(Ok(line.into())).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_types_by_content_type() {
        assert_eq!(patch_type("application/merge-patch+json").unwrap(), PatchType::Merge);
        assert_eq!(patch_type("application/strategic-merge-patch+json; charset=utf-8").unwrap(), PatchType::Strategic);
        assert_eq!(patch_type("application/json-patch+json").unwrap(), PatchType::Json);
        assert_eq!(patch_type("text/plain").unwrap_err().code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
