//! `pods/proxy` and `services/proxy`: HTTP requests passed through to a
//! pod, or to a ready endpoint of a Service, as kube-apiserver does
//! (`kubectl get --raw …/pods/web:8080/proxy/healthz`, `kubectl proxy`
//! users reaching a Service's page). The name may carry the port
//! (`web:8080`, `web:http`); plain HTTP to the pod network only.
//!
//! Authorized as `VERB pods/proxy` (or `services/proxy`), the verb read off
//! the HTTP method as for every other request.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use serde_json::Value;

use super::path::Target;
use super::status::Failure;
use super::{Call, Reply, Rest};
use crate::auth::Access;

/// How long reaching the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Request headers not passed on: the caller's credentials are the
/// apiserver's business, not the pod's; hop-by-hop headers are the
/// connection's.
const DROPPED: &[header::HeaderName] =
    &[header::AUTHORIZATION, header::CONNECTION, header::HOST, header::TRANSFER_ENCODING, header::UPGRADE];

impl Rest {
    pub(super) async fn proxy(&self, call: &Call, t: &Target, method: &Method, body: Body) -> Reply {
        let (name, port) = split_name(t.name.as_deref().unwrap_or_default());
        let access = Access {
            verb: verb(method),
            kind: t.info.kind,
            subresource: "proxy",
            namespace: &t.namespace,
            name: &name,
        };
        self.objects
            .authorizer
            .authorize(&call.user, &access)
            .map_err(|why| Failure::new(StatusCode::FORBIDDEN, "Forbidden", why))?;
        let target = match t.info.kind {
            "Pod" => self.pod_address(&t.namespace, &name, &port).await?,
            _ => self.service_address(&t.namespace, &name, &port).await?,
        };
        let query = call.query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let path = if query.is_empty() { format!("/{}", t.tail) } else { format!("/{}?{query}", t.tail) };
        forward(target, method, &path, &call.headers, body).await
    }

    async fn pod_address(&self, namespace: &str, name: &str, port: &str) -> Result<SocketAddr, Failure> {
        let pod = self.read("Pod", namespace, name).await?;
        let ip = pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or_default();
        let ip = ip.parse().map_err(|_| unavailable(format!("pod {name:?} has no IP yet")))?;
        let declared = pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten();
        let ports: Vec<&Value> = declared.flat_map(|c| c["ports"].as_array().into_iter().flatten()).collect();
        let number = match port {
            "" => ports.first().and_then(|p| p["containerPort"].as_u64()).unwrap_or(80),
            p => match p.parse::<u64>() {
                Ok(n) => n,
                Err(_) => ports
                    .iter()
                    .find(|d| d["name"] == p)
                    .and_then(|d| d["containerPort"].as_u64())
                    .ok_or_else(|| Failure::bad_request(format!("pod {name:?} declares no port named {p:?}")))?,
            },
        };
        let number =
            u16::try_from(number).map_err(|_| Failure::bad_request(format!("port {number} is out of range")))?;
        Ok(SocketAddr::new(ip, number))
    }

    /// A ready address of the Service's Endpoints, on the endpoint port of
    /// the Service port `port` names (its name or number; the first port
    /// when empty). Endpoint ports carry their Service port's name.
    async fn service_address(&self, namespace: &str, name: &str, port: &str) -> Result<SocketAddr, Failure> {
        let service = self.read("Service", namespace, name).await?;
        let ports = service.pointer("/spec/ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let wanted = match port {
            "" => ports.first(),
            p => {
                ports.iter().find(|s| s["name"] == p || s["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(p))
            }
        };
        let wanted = wanted.ok_or_else(|| Failure::bad_request(format!("service {name:?} has no port {port:?}")))?;
        let port_name = wanted["name"].as_str().unwrap_or_default();
        let endpoints = self.read("Endpoints", namespace, name).await?;
        for subset in endpoints["subsets"].as_array().into_iter().flatten() {
            let ports = subset["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
            let chosen = ports.iter().find(|e| e["name"].as_str().unwrap_or_default() == port_name);
            let Some(number) = chosen.and_then(|e| e["port"].as_u64()).and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let address =
                subset["addresses"].as_array().into_iter().flatten().find_map(|a| a["ip"].as_str()?.parse().ok());
            if let Some(ip) = address {
                return Ok(SocketAddr::new(ip, number));
            }
        }
        Err(unavailable(format!("no endpoints available for service {name:?}")))
    }

    async fn read(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, Failure> {
        self.objects.registry.get_value(kind, namespace, name).await.map_err(|e| Failure::from_status(&e.into(), None))
    }
}

fn unavailable(message: String) -> Failure {
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
}

/// `name`, `name:port`, or a Service's `scheme:name:port` (the scheme is
/// HTTP here whatever it says).
fn split_name(segment: &str) -> (String, String) {
    let parts: Vec<&str> = segment.split(':').collect();
    match parts.as_slice() {
        [name] => (name.to_string(), String::new()),
        [name, port] => (name.to_string(), port.to_string()),
        [_, name, port, ..] => (name.to_string(), port.to_string()),
        [] => (String::new(), String::new()),
    }
}

/// The authorization verb of an HTTP method, as kube-apiserver reads it.
fn verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "proxy",
    }
}

/// Sends the request on to `target` over a connection of its own and
/// streams the answer back.
async fn forward(target: SocketAddr, method: &Method, path: &str, headers: &HeaderMap, body: Body) -> Reply {
    let unreachable = |e: &dyn std::fmt::Display| unavailable(format!("error trying to reach {target}: {e}"));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .map_err(|e| unreachable(&e))?
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection);
    let mut request = Request::builder().method(method.clone()).uri(path);
    for (name, value) in headers.iter().filter(|(name, _)| !DROPPED.contains(name)) {
        request = request.header(name, value);
    }
    let request =
        request.header(header::HOST, target.to_string()).body(body).map_err(|e| Failure::bad_request(e.to_string()))?;
    sender.ready().await.map_err(|e| unreachable(&e))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_ports_and_schemes() {
        assert_eq!(split_name("web"), ("web".into(), String::new()));
        assert_eq!(split_name("web:8080"), ("web".into(), "8080".into()));
        assert_eq!(split_name("https:web:443"), ("web".into(), "443".into()));
        assert_eq!((verb(&Method::GET), verb(&Method::POST), verb(&Method::DELETE)), ("get", "create", "delete"));
    }
}
