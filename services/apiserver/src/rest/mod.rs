//! The Kubernetes REST front (`--rest-listen`): what kubectl, client-go,
//! the Python client and the rest of the ecosystem speak.
//!
//! Each request becomes the call the gRPC API would make on the same
//! [`ObjectsService`] (or [`PodProxyService`] for logs), with the caller
//! this module authenticated through the same [`Authenticator`]: so
//! authorization, admission, validation, the registry, the watch cache,
//! audit and metrics are the gRPC path's, one copy of every rule. What is
//! REST's own lives here: paths (`path.rs`), discovery (`discovery.rs`),
//! Status bodies (`status.rs`), Tables (`table.rs`), list and watch framing,
//! and the subresources kubectl reaches by URL (scale, binding, eviction,
//! log, token, access reviews).

mod discovery;
mod exec;
mod path;
mod protobuf;
mod proxy;
mod status;
mod table;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
use skiff_api::proto::objects_server::Objects;
use skiff_api::proto::pod_proxy_server::PodProxy;
use skiff_api::proto::{
    watch_event::Type as EventType, AccessReviewRequest, BindRequest, CreateRequest, DeleteRequest, GetRequest,
    ListRequest, LogsRequest, PatchRequest, PatchType, TokenRequest, UpdateRequest, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use self::path::{Route, Target};
use self::status::Failure;
use self::table::Include;
use crate::auth::{Authenticator, PeerInfo, UserInfo};
use crate::proxy::PodProxyService;
use crate::service::ObjectsService;

/// What the REST front calls into.
pub struct Rest {
    pub objects: Arc<ObjectsService>,
    pub pods: Arc<PodProxyService>,
    pub authenticator: Arc<Authenticator>,
    /// The largest request body taken, as the gRPC API's message limit.
    pub max_body: usize,
    pub inflight: InFlight,
}

/// kube-apiserver's in-flight limits: at most so many reads and so many
/// writes at once (long-running requests — watches, exec, followed logs —
/// apart); past them a request is answered 429 with Retry-After, and the
/// client backs off rather than piling more work on a saturated server.
pub struct InFlight {
    reads: Option<tokio::sync::Semaphore>,
    writes: Option<tokio::sync::Semaphore>,
}

impl InFlight {
    /// Limits of `reads` and `writes` at once; 0 is none.
    pub fn new(reads: usize, writes: usize) -> InFlight {
        let limit = |n: usize| (n > 0).then(|| tokio::sync::Semaphore::new(n));
        InFlight { reads: limit(reads), writes: limit(writes) }
    }

    /// A place for one request, or the 429 that refuses it.
    fn admit(&self, method: &Method) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, Failure> {
        let limit = if matches!(*method, Method::GET | Method::HEAD) { &self.reads } else { &self.writes };
        let Some(limit) = limit else { return Ok(None) };
        limit.try_acquire().map(Some).map_err(|_| {
            Failure::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests, please try again later.")
        })
    }
}

/// Requests that stay open as long as the client wants: not counted in flight.
fn long_running(call: &Call, route: &Route) -> bool {
    match route {
        Route::Object(t) => call.flag("watch") || matches!(t.subresource.as_deref(), Some("exec" | "log" | "proxy")),
        _ => false,
    }
}

type Reply = Result<Response<Body>, Failure>;

/// How long a watch runs without `timeoutSeconds`: kube-apiserver's
/// default minimum request timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Serves `listener` until `stop` resolves: HTTP/1.1 and HTTP/2 (ALPN
/// under TLS), each connection carrying its peer for authentication.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    rest: Arc<Rest>,
    stop: impl Future<Output = ()>,
) {
    let tls = tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    });
    let mut incoming = skiff_pki::serve::incoming(listener, tls);
    tokio::pin!(stop);
    loop {
        let conn = tokio::select! {
            _ = &mut stop => return,
            conn = incoming.next() => match conn {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        let peer = conn.connect_info();
        let rest = rest.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (rest, peer) = (rest.clone(), peer.clone());
                async move { Ok::<_, Infallible>(rest.handle(req.map(Body::new), peer).await) }
            });
            let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = server.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(conn), service).await {
                tracing::debug!(error = %e, "REST connection ended");
            }
        });
    }
}

/// One request's caller and parameters.
struct Call {
    user: UserInfo,
    peer: PeerInfo,
    headers: HeaderMap,
    /// In order, repeats kept (`command=sh&command=-c`).
    query: Vec<(String, String)>,
}

impl Call {
    fn param(&self, name: &str) -> &str {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default()
    }

    fn query_all(&self, name: &str) -> Vec<String> {
        self.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), "true" | "1")
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The gRPC request the shared call path takes: the caller found here,
    /// and the headers it records (user agent, trace context).
    fn grpc<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(self.user.clone());
        request.extensions_mut().insert(self.peer.clone());
        for name in ["user-agent", "traceparent", "tracestate"] {
            if let Some(value) = self.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
                request.metadata_mut().insert(name, value);
            }
        }
        request
    }

    fn table(&self) -> Option<Include> {
        let include = Some(self.param("includeObject")).filter(|v| !v.is_empty());
        table::wants_table(self.header(header::ACCEPT)).then(|| Include::parse(include))
    }
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn json_reply(code: StatusCode, body: impl Into<Body>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn value_reply(code: StatusCode, value: &Value) -> Response<Body> {
    json_reply(code, value.to_string(), "application/json")
}

fn failure_reply(failure: Failure) -> Response<Body> {
    let mut response = value_reply(failure.code, &failure.body);
    if let Some(seconds) = failure.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A body of a kind kubectl may send as protobuf (`protobuf.rs`), as JSON.
fn typed_body(call: &Call, body: &[u8], kind: &str) -> Result<Value, Failure> {
    let content_type = call.header(header::CONTENT_TYPE);
    if content_type.starts_with(protobuf::CONTENT_TYPE) {
        return protobuf::decode(body).map_err(|e| Failure::bad_request(format!("the {kind} body: {e}")));
    }
    parse_json(body, content_type)
}

fn unsupported_media_type(content_type: &str) -> Failure {
    Failure::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format ({content_type:?}); accepted: application/json, application/yaml"),
    )
}

fn parse_json(bytes: &[u8], content_type: &str) -> Result<Value, Failure> {
    if content_type.starts_with(protobuf::CONTENT_TYPE) {
        return Err(unsupported_media_type(content_type));
    }
    if content_type.starts_with("application/yaml") || content_type.starts_with("application/apply-patch+yaml") {
        return serde_yaml_ng::from_slice(bytes)
            .map_err(|e| Failure::bad_request(format!("the body is not valid YAML: {e}")));
    }
    serde_json::from_slice(bytes).map_err(|e| Failure::bad_request(format!("the body is not valid JSON: {e}")))
}

impl Rest {
    async fn handle(&self, request: http::Request<Body>, peer: PeerInfo) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let route = Route::of(parts.uri.path());
        if route == Route::Health {
            return json_reply(StatusCode::OK, "ok", "text/plain");
        }
        let result = match self.authenticate(&parts.headers, &peer).and_then(|u| self.impersonate(&parts.headers, u)) {
            Ok(user) => {
                let call = Call { user, peer, headers: parts.headers, query: parse_query(parts.uri.query()) };
                let permit = if long_running(&call, &route) { Ok(None) } else { self.inflight.admit(&parts.method) };
                match permit {
                    Ok(_held) => self.route(&call, parts.method, route, body, upgrade).await,
                    Err(refused) => Err(refused),
                }
            }
            Err(failure) => Err(failure),
        };
        result.unwrap_or_else(failure_reply)
    }

    /// The caller, as the gRPC interceptor finds it: client certificate,
    /// bearer token, or anonymous where allowed.
    fn authenticate(&self, headers: &HeaderMap, peer: &PeerInfo) -> Result<UserInfo, Failure> {
        let mut probe = tonic::Request::new(());
        probe.extensions_mut().insert(peer.clone());
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = tonic::metadata::AsciiMetadataValue::try_from(value.as_bytes())
                .map_err(|_| Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", "invalid Authorization header"))?;
            probe.metadata_mut().insert("authorization", value);
        }
        self.authenticator.authenticate(&probe).map_err(|status| Failure::from_status(&status, None))
    }

    /// The user the request acts as: the caller, or whom its
    /// `Impersonate-User` and `Impersonate-Group` headers name, if allowed.
    fn impersonate(&self, headers: &HeaderMap, caller: UserInfo) -> Result<UserInfo, Failure> {
        let text = |v: &HeaderValue| v.to_str().unwrap_or_default().to_string();
        let groups: Vec<String> = headers.get_all("impersonate-group").iter().map(text).collect();
        let Some(user) = headers.get("impersonate-user").map(text) else {
            if groups.is_empty() {
                return Ok(caller);
            }
            return Err(Failure::bad_request("Impersonate-Group needs Impersonate-User"));
        };
        crate::auth::impersonate(&self.objects.authorizer, &caller, &user, &groups)
            .map_err(|why| Failure::new(StatusCode::FORBIDDEN, "Forbidden", why))
    }

    async fn route(
        &self,
        call: &Call,
        method: Method,
        route: Route,
        body: Body,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Reply {
        let accept = call.header(header::ACCEPT);
        let discovery = |value: Value| Ok(value_reply(StatusCode::OK, &value));
        match route {
            Route::Version => discovery(discovery::version()),
            Route::CoreVersions | Route::Groups if discovery::wants_aggregated(accept) => {
                let document = discovery::aggregated(route == Route::CoreVersions);
                Ok(json_reply(StatusCode::OK, document.to_string(), discovery::AGGREGATED))
            }
            Route::CoreVersions => discovery(discovery::core_versions(call.header(header::HOST))),
            Route::Groups => discovery(discovery::groups()),
            Route::Group(group) => discovery::group(&group).map_or_else(|| Err(not_found()), discovery),
            Route::Resources { group, version } => {
                discovery::resources(&group, &version).map_or_else(|| Err(not_found()), discovery)
            }
            Route::AccessReview { about_self } if method == Method::POST => {
                self.access_review(call, about_self, self.body(body).await?).await
            }
            Route::Object(target) => self.object(call, method, target, body, upgrade).await,
            Route::AccessReview { .. } => Err(Failure::method_not_allowed("access reviews")),
            Route::OpenApiV3(path) => openapi_v3(&path),
            Route::OpenApiV2 | Route::Health | Route::NotFound => Err(not_found()),
        }
    }

    async fn body(&self, body: Body) -> Result<Bytes, Failure> {
        axum::body::to_bytes(body, self.max_body).await.map_err(|_| {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("the request body is larger than {} bytes", self.max_body),
            )
        })
    }

    async fn object(
        &self,
        call: &Call,
        method: Method,
        t: Target,
        body: Body,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Reply {
        let named = t.name.is_some();
        let kind = t.info.kind;
        match (&method, named, t.subresource.as_deref()) {
            (&Method::GET, false, None) if call.flag("watch") => self.watch(call, &t).await,
            (&Method::GET, false, None) => self.list(call, &t).await,
            (&Method::POST, false, None) => self.create(call, &t, self.body(body).await?).await,
            (&Method::DELETE, false, None) => self.delete_collection(call, &t).await,
            (&Method::GET, true, None) => self.get(call, &t).await,
            (&Method::GET, true, Some("status")) if t.info.has_status => self.get(call, &t).await,
            (&Method::PUT, true, None) => self.update(call, &t, self.body(body).await?, false).await,
            (&Method::PUT, true, Some("status")) if t.info.has_status => {
                self.update(call, &t, self.body(body).await?, true).await
            }
            (&Method::PUT, true, Some("finalize")) if kind == "Namespace" => {
                self.update(call, &t, self.body(body).await?, true).await
            }
            (&Method::PATCH, true, None) => self.patch(call, &t, self.body(body).await?).await,
            (&Method::DELETE, true, None) => self.delete(call, &t, self.body(body).await?).await,
            (&Method::GET | &Method::PUT | &Method::PATCH, true, Some("scale"))
                if matches!(kind, "Deployment" | "ReplicaSet" | "StatefulSet") =>
            {
                let body = self.body(body).await?;
                self.scale(call, &t, &method, body).await
            }
            (&Method::POST, true, Some("binding")) if kind == "Pod" => {
                self.bind(call, &t, self.body(body).await?).await
            }
            (&Method::POST, true, Some("eviction")) if kind == "Pod" => {
                self.evict(call, &t, self.body(body).await?).await
            }
            (&Method::GET, true, Some("log")) if kind == "Pod" => self.logs(call, &t).await,
            (&Method::GET | &Method::POST, true, Some("exec")) if kind == "Pod" => self.exec(call, &t, upgrade).await,
            (_, true, Some("proxy")) if matches!(kind, "Pod" | "Service") => self.proxy(call, &t, &method, body).await,
            (&Method::POST, true, Some("token")) if kind == "ServiceAccount" => {
                self.token(call, &t, self.body(body).await?).await
            }
            (_, _, None) => Err(Failure::method_not_allowed(t.info.plural)),
            (_, _, Some(sub)) => Err(Failure::not_found(format!(
                "the server could not find the requested resource ({} {}/{sub})",
                method, t.info.plural
            ))),
        }
    }

    fn name<'t>(&self, t: &'t Target) -> &'t str {
        t.name.as_deref().unwrap_or_default()
    }

    /// The object as the response to a read: JSON, or a one-row Table.
    fn object_reply(&self, call: &Call, t: &Target, code: StatusCode, object: Bytes) -> Reply {
        match call.table() {
            Some(include) => {
                let value: Value = serde_json::from_slice(&object).map_err(internal)?;
                let rv = skiff_api::meta::resource_version(&value).to_string();
                Ok(value_reply(code, &table::table(t.info, vec![value], &rv, "", include)))
            }
            None => Ok(json_reply(code, object, "application/json")),
        }
    }

    async fn get(&self, call: &Call, t: &Target) -> Reply {
        let request =
            GetRequest { kind: t.info.kind.into(), namespace: t.namespace.clone(), name: self.name(t).into() };
        let reply = self.objects.get(call.grpc(request)).await.map_err(|s| Failure::from_status(&s, Some(t)))?;
        self.object_reply(call, t, StatusCode::OK, reply.into_inner().object)
    }

    fn list_request(&self, call: &Call, t: &Target) -> Result<ListRequest, Failure> {
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
        })
    }

    async fn list(&self, call: &Call, t: &Target) -> Reply {
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

    async fn create(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
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
    fn normalized_body(&self, call: &Call, body: &Bytes) -> Result<Bytes, Failure> {
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

    async fn update(&self, call: &Call, t: &Target, body: Bytes, status: bool) -> Reply {
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

    async fn patch(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let patch_type = patch_type(call.header(header::CONTENT_TYPE))?;
        // An applied configuration may be YAML; the API takes it as JSON.
        let body = match patch_type {
            PatchType::Apply => Bytes::from(parse_json(&body, "application/apply-patch+yaml")?.to_string()),
            _ => body,
        };
        let object = self.patch_object(call, t, body, patch_type).await?;
        Ok(json_reply(StatusCode::OK, object, "application/json"))
    }

    async fn patch_object(
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

    async fn delete(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let options = DeleteOptions::read(call, &body)?;
        let object = self.delete_one(call, t, self.name(t), &options).await?;
        Ok(json_reply(StatusCode::OK, object, "application/json"))
    }

    async fn delete_one(&self, call: &Call, t: &Target, name: &str, options: &DeleteOptions) -> Result<Bytes, Failure> {
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
    async fn delete_collection(&self, call: &Call, t: &Target) -> Reply {
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

    async fn watch(&self, call: &Call, t: &Target) -> Reply {
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

    async fn scale(&self, call: &Call, t: &Target, method: &Method, body: Bytes) -> Reply {
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

    async fn bind(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
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
    async fn evict(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
        let eviction = typed_body(call, &body, "Eviction")?;
        let options = eviction.get("deleteOptions").map(|o| o.to_string().into_bytes()).unwrap_or_default();
        let options = DeleteOptions::read(call, &Bytes::from(options))?;
        self.delete_one(call, t, self.name(t), &options).await?;
        Ok(value_reply(StatusCode::CREATED, &status::success(t)))
    }

    async fn logs(&self, call: &Call, t: &Target) -> Reply {
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

    async fn token(&self, call: &Call, t: &Target, body: Bytes) -> Reply {
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
    async fn access_review(&self, call: &Call, about_self: bool, body: Bytes) -> Reply {
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

/// The OpenAPI v3 documents, built from the types once, with the hash
/// their URLs carry so clients cache them.
struct OpenApi {
    root: Value,
    documents: HashMap<String, Bytes>,
}

fn openapi() -> &'static OpenApi {
    static OPENAPI: std::sync::OnceLock<OpenApi> = std::sync::OnceLock::new();
    OPENAPI.get_or_init(|| {
        let mut paths = serde_json::Map::new();
        let mut documents = HashMap::new();
        for (path, document) in skiff_api::openapi::documents() {
            let bytes = Bytes::from(document.to_string());
            let hash = {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut hasher);
                format!("{:016X}", hasher.finish())
            };
            paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
            documents.insert(path, bytes);
        }
        OpenApi { root: json!({"paths": paths}), documents }
    })
}

/// `/openapi/v3` (the index) or one group/version's document.
fn openapi_v3(path: &str) -> Reply {
    let openapi = openapi();
    if path.is_empty() {
        return Ok(value_reply(StatusCode::OK, &openapi.root));
    }
    let document = openapi.documents.get(path).ok_or_else(not_found)?;
    Ok(json_reply(StatusCode::OK, document.clone(), "application/json"))
}

/// `?dryRun=All`: validate and admit, store nothing.
fn dry_run(call: &Call) -> Result<bool, Failure> {
    match call.param("dryRun") {
        "" => Ok(false),
        "All" => Ok(true),
        other => Err(Failure::bad_request(format!("dryRun: {other:?} is not supported; the one value is All"))),
    }
}

fn not_found() -> Failure {
    Failure::not_found("the server could not find the requested resource")
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string())
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
struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    resource_version: String,
    propagation_policy: String,
    dry_run: bool,
}

impl DeleteOptions {
    fn read(call: &Call, body: &Bytes) -> Result<DeleteOptions, Failure> {
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
    fn in_flight_limits_refuse_with_429_and_free_their_places() {
        let limits = InFlight::new(1, 1);
        let read = limits.admit(&Method::GET).unwrap();
        let refused = limits.admit(&Method::GET).unwrap_err();
        assert_eq!(refused.code, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after(), Some(1));
        let write = limits.admit(&Method::POST).expect("writes have their own places");
        drop(read);
        assert!(limits.admit(&Method::GET).is_ok(), "a finished read frees its place");
        drop(write);
        assert!(InFlight::new(0, 0).admit(&Method::DELETE).unwrap().is_none(), "0 is no limit");
    }

    #[test]
    fn patch_types_by_content_type() {
        assert_eq!(patch_type("application/merge-patch+json").unwrap(), PatchType::Merge);
        assert_eq!(patch_type("application/strategic-merge-patch+json; charset=utf-8").unwrap(), PatchType::Strategic);
        assert_eq!(patch_type("application/json-patch+json").unwrap(), PatchType::Json);
        assert_eq!(patch_type("text/plain").unwrap_err().code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

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
