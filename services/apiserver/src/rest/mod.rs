//! The Kubernetes REST front (`--rest-listen`): what kubectl, client-go,
//! the Python client and the rest of the ecosystem speak.
//!
//! Each request becomes the call the gRPC API would make on the same
//! [`ObjectsService`] (or [`PodProxyService`] for logs and exec), with the
//! caller this module authenticated through the same [`Authenticator`]:
//! so authorization, admission, validation, the registry, the watch cache,
//! audit and metrics are the gRPC path's, one copy of every rule. What is
//! REST's own: serving, authentication and routing (here), paths
//! (`path.rs`), discovery (`discovery.rs`), the verbs with list and watch
//! framing (`objects.rs`), the subresources kubectl reaches by URL
//! (`subresources.rs`, `exec.rs`, `proxy.rs`), Status bodies (`status.rs`),
//! Tables (`table.rs`) and protobuf bodies (`protobuf.rs`).

mod discovery;
mod exec;
mod metrics;
mod objects;
mod path;
mod protobuf;
mod proxy;
mod status;
mod subresources;
mod table;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
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
            Route::Metrics(what) if method == Method::GET => self.metrics(call, what).await,
            Route::Metrics(_) => Err(Failure::method_not_allowed("metrics")),
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

fn not_found() -> Failure {
    Failure::not_found("the server could not find the requested resource")
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string())
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
}
