//! The request path: pingora's [`ProxyHttp`] hooks over the current
//! [`RouteTable`].
//!
//! A request loads the table once (in `request_filter`) and keeps its route
//! until it ends, so a table swapped in meanwhile affects only later
//! requests, and an endpoint removed mid-request finishes its response.
//! Errors are answered here the way ingress-nginx answers them: 404 from
//! the default backend, 503 naming the Service that cannot serve, 413 over
//! the body limit, 502/504 when endpoints fail.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, COOKIE, HOST, LOCATION};
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use skiff_telemetry::prometheus::IntGauge;

use crate::balance::{ActiveGuard, PeerState};
use crate::metrics::{IngressMetrics, RouteLabels};
use crate::routes::{Route, RouteTable, Target};
use crate::settings::{Balance, HashKey, Protocol};

/// Endpoints tried for one request when connecting fails: the first and
/// two others, as ingress-nginx's proxy_next_upstream_tries=3.
const MAX_TRIES: usize = 3;

pub type SharedTable = Arc<ArcSwap<RouteTable>>;

/// Counts a request in `skiff_ingress_active_requests` until it ends; the
/// graceful drain waits on the same gauge.
struct InFlightGuard(IntGauge);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One listener's proxy: plain HTTP or TLS.
pub struct IngressProxy {
    pub table: SharedTable,
    pub metrics: IngressMetrics,
    /// `https` on the TLS listener, else `http`.
    pub scheme: &'static str,
    /// The port TLS is served on, when it is: plain-HTTP requests for TLS
    /// hosts are redirected there.
    pub https_port: Option<u16>,
    /// A span per request, only when spans are exported: building one costs
    /// more than the rest of the request's own work.
    pub trace_requests: bool,
}

impl IngressProxy {
    /// Whether a retry may go to an endpoint this request has not tried.
    fn another_endpoint_left(&self, ctx: &RequestCtx) -> bool {
        let Some(Target::Service { endpoints, .. }) = ctx.route.as_ref().map(|r| &r.target) else { return false };
        ctx.tried.len() < MAX_TRIES && endpoints.addrs().any(|a| !ctx.tried.contains(&a))
    }
}

/// One request's state across the hooks.
pub struct RequestCtx {
    started: Instant,
    route: Option<Arc<Route>>,
    tried: Vec<SocketAddr>,
    current: Option<Arc<PeerState>>,
    _active: Option<ActiveGuard>,
    request_id: String,
    body_bytes: u64,
    span: tracing::Span,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn labels(&self) -> RouteLabels<'_> {
        match &self.route {
            Some(r) => RouteLabels {
                ingress: &r.ingress,
                host: &r.host,
                path: &r.path,
                service: match &r.target {
                    Target::Service { service, .. } => service,
                    Target::Unavailable(_) => "-",
                },
            },
            None => RouteLabels { ingress: "-", host: "-", path: "-", service: "-" },
        }
    }
}

#[async_trait]
impl ProxyHttp for IngressProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.metrics.active.inc();
        RequestCtx {
            started: Instant::now(),
            route: None,
            tried: Vec::new(),
            current: None,
            _active: None,
            request_id: String::new(),
            body_bytes: 0,
            span: tracing::Span::none(),
            _in_flight: InFlightGuard(self.metrics.active.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path().to_string();
        ctx.request_id = header_str(req, "x-request-id")
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .map(str::to_string)
            .unwrap_or_else(request_id);
        if self.trace_requests {
            ctx.span = tracing::info_span!(
                "ingress request",
                otel.kind = "server",
                http.request.method = %req.method,
                url.path = %path,
                server.address = %host,
                http.response.status_code = tracing::field::Empty,
            );
            let carried: HashMap<String, String> = ["traceparent", "tracestate"]
                .into_iter()
                .filter_map(|k| header_str(req, k).map(|v| (k.to_string(), v.to_string())))
                .collect();
            if !carried.is_empty() {
                skiff_telemetry::set_remote_parent_from_headers(&ctx.span, carried);
            }
        }

        let table = self.table.load();
        let Some(route) = table.find(&host, &path).cloned() else {
            respond(session, 404, "default backend - 404\n").await?;
            return Ok(true);
        };
        let redirect = self
            .https_port
            .filter(|_| self.scheme == "http" && route.tls && route.settings.ssl_redirect != Some(false));
        let max_body = route.settings.max_body;
        ctx.route = Some(route.clone());
        if let Some(port) = redirect {
            let location = https_location(&host, port, session.req_header());
            let mut resp = ResponseHeader::build(308, Some(2))?;
            resp.insert_header(LOCATION, location)?;
            resp.insert_header(CONTENT_LENGTH, "0")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        let declared = header_str(session.req_header(), "content-length").and_then(|v| v.parse::<u64>().ok());
        if let (Some(limit), Some(len)) = (max_body, declared) {
            if len > limit {
                respond(session, 413, "request body too large\n").await?;
                return Ok(true);
            }
        }
        match &route.target {
            Target::Unavailable(why) => {
                respond(session, 503, &format!("{why}\n")).await?;
                Ok(true)
            }
            Target::Service { service, endpoints, .. } if endpoints.is_empty() => {
                respond(session, 503, &format!("service {service} has no ready endpoints\n")).await?;
                Ok(true)
            }
            Target::Service { .. } => Ok(false),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Bodies without a Content-Length (chunked) are counted as they come.
        ctx.body_bytes = ctx.body_bytes.saturating_add(body.as_ref().map_or(0, |b| b.len() as u64));
        let limit = ctx.route.as_ref().and_then(|r| r.settings.max_body);
        if limit.is_some_and(|limit| ctx.body_bytes > limit) {
            return Err(Error::explain(ErrorType::HTTPStatus(413), "request body too large"));
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::InternalError, "no route"));
        };
        let Target::Service { endpoints, .. } = &route.target else {
            return Err(Error::explain(ErrorType::HTTPStatus(503), "backend unavailable"));
        };
        let key = hash_key(&route.settings.balance, session);
        let Some((addr, state)) = endpoints.pick(&route.settings.balance, key.as_deref(), &ctx.tried) else {
            return Err(Error::explain(ErrorType::HTTPStatus(502), "every endpoint failed"));
        };
        ctx.tried.push(addr);
        ctx._active = Some(ActiveGuard::new(state.clone()));
        ctx.current = Some(state);

        let mut peer = HttpPeer::new(addr, false, String::new());
        let settings = &route.settings;
        peer.options.connection_timeout = Some(settings.connect_timeout);
        peer.options.total_connection_timeout = Some(settings.connect_timeout);
        peer.options.read_timeout = Some(settings.read_timeout);
        peer.options.write_timeout = Some(settings.read_timeout);
        if settings.protocol == Protocol::Grpc {
            peer.options.alpn = ALPN::H2;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(route) = &ctx.route else { return e };
        let ctx_labels = ctx.labels();
        self.metrics.connect_error(ctx_labels.service);
        if let Some(state) = &ctx.current {
            if state.record_failure(route.settings.max_fails, route.settings.fail_timeout) {
                tracing::warn!(endpoint = %peer._address, service = ctx_labels.service, "endpoint ejected after connect failures");
            }
        }
        // Nothing was sent yet, so any method may go to another endpoint.
        if self.another_endpoint_left(ctx) {
            e.set_retry(true);
        }
        e
    }

    /// An endpoint failed after the request went out. Idempotent requests
    /// whose response has not started go to another endpoint, as nginx's
    /// `proxy_next_upstream error timeout` does: a pod that exits mid-request
    /// (deleted under load) costs the client nothing.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("endpoint {}", peer._address));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        // A pooled connection the endpoint had already closed (pingora
        // marks such failures ReusedOnly) says nothing about the endpoint:
        // it may be picked again, on a fresh connection, as pingora's own
        // default retries. Without this a Service with one endpoint lost
        // the request.
        if replayable && client_reused && matches!(e.retry, RetryType::ReusedOnly) {
            ctx.tried.pop();
            e.set_retry(true);
            return e;
        }
        if let (Some(route), Some(state)) = (&ctx.route, &ctx.current) {
            state.record_failure(route.settings.max_fails, route.settings.fail_timeout);
        }
        e.set_retry(replayable && self.another_endpoint_left(ctx));
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Some(ip) = client_ip {
            let forwarded_for = match header_str(upstream, "x-forwarded-for") {
                Some(prior) if !prior.is_empty() => format!("{prior}, {ip}"),
                _ => ip.to_string(),
            };
            upstream.insert_header("x-forwarded-for", forwarded_for)?;
            upstream.insert_header("x-real-ip", ip.to_string())?;
        }
        let host = header_str(upstream, "host").map(str::to_string).or_else(|| upstream.uri.host().map(str::to_string));
        if let Some(host) = host {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        upstream.insert_header("x-forwarded-proto", self.scheme)?;
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if self.trace_requests {
            for (name, value) in ctx.span.in_scope(skiff_telemetry::trace_context_headers) {
                upstream.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(state) = &ctx.current {
            state.record_success();
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut RequestCtx) -> FailToProxy {
        let code = error_status(e.etype(), e.esource());
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(error = %err, "answering a failed request");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let labels = ctx.labels();
        self.metrics.observe(&labels, code, elapsed);
        ctx.span.record("http.response.status_code", code);
        let req = session.req_header();
        let _enter = ctx.span.enter();
        tracing::info!(
            target: "skiff_ingress::access",
            request_id = %ctx.request_id,
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            method = %req.method,
            host = %request_host(req),
            path = %req.uri.path(),
            status = code,
            upstream = %ctx.tried.last().map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            attempts = ctx.tried.len(),
            ingress = labels.ingress,
            service = labels.service,
            duration_ms = duration_ms(elapsed),
            error = %e.map(|e| e.to_string()).unwrap_or_default(),
            "request"
        );
    }
}

/// The status a failed request is answered with, as nginx answers: 504
/// when the endpoint timed out, 502 for its other failures, 400 for a
/// malformed request, 0 (nothing) when the client is gone.
fn error_status(etype: &ErrorType, source: &ErrorSource) -> u16 {
    match (etype, source) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => 504,
        (_, ErrorSource::Upstream) => 502,
        (ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed, ErrorSource::Downstream) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

/// A request ID for a request that came without one: 32 hex digits, as
/// ingress-nginx's `$req_id`, unique in this process by a counter under a
/// random prefix drawn once (no syscall per request).
fn request_id() -> String {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    format!("{prefix:016x}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The request's host without port, from `Host` or the URI (HTTP/2).
fn request_host(req: &RequestHeader) -> String {
    let raw = header_str(req, HOST.as_str()).or_else(|| req.uri.host()).unwrap_or_default();
    strip_port(raw).to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn https_location(host: &str, port: u16, req: &RequestHeader) -> String {
    let path_and_query = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{host}{path_and_query}")
    } else {
        format!("https://{host}:{port}{path_and_query}")
    }
}

/// What the route's hash policy keys the request by; `None` falls back to
/// round robin (no such header or cookie).
fn hash_key(balance: &Balance, session: &Session) -> Option<Vec<u8>> {
    let Balance::Hash(key) = balance else { return None };
    let req = session.req_header();
    match key {
        HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => req.headers.get_all(COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.as_bytes().to_vec())
            })
        }),
        HashKey::SourceIp => session.client_addr().and_then(|a| a.as_inet()).map(|a| ip_bytes(a.ip())),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A short plain-text answer (404, 413, 503).
async fn respond(session: &mut Session, code: u16, body: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_timeouts_are_504_and_other_endpoint_failures_502() {
        assert_eq!(error_status(&ErrorType::ReadTimedout, &ErrorSource::Upstream), 504);
        assert_eq!(error_status(&ErrorType::ConnectTimedout, &ErrorSource::Upstream), 504);
        assert_eq!(error_status(&ErrorType::ConnectRefused, &ErrorSource::Upstream), 502);
        assert_eq!(error_status(&ErrorType::HTTPStatus(413), &ErrorSource::Internal), 413);
        assert_eq!(error_status(&ErrorType::InvalidHTTPHeader, &ErrorSource::Downstream), 400);
        assert_eq!(error_status(&ErrorType::ConnectionClosed, &ErrorSource::Downstream), 0);
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_never_repeat() {
        let (a, b) = (request_id(), request_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16], "one prefix per process");
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("demo.localtest.me:8080"), "demo.localtest.me");
        assert_eq!(strip_port("demo.localtest.me"), "demo.localtest.me");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }

    #[test]
    fn redirects_keep_path_and_query_and_name_a_non_default_port() {
        let req = RequestHeader::build("GET", b"/a/b?x=1", None).unwrap();
        assert_eq!(https_location("shop.example.com", 443, &req), "https://shop.example.com/a/b?x=1");
        assert_eq!(https_location("shop.example.com", 8443, &req), "https://shop.example.com:8443/a/b?x=1");
    }
}
