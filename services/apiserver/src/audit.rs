//! The audit log: one JSON line per mutating request (create, update,
//! updateStatus, patch, delete, bind), shaped as Kubernetes' audit.k8s.io/v1
//! Event at level Metadata: who, what, when, from where, and the outcome.
//!
//! Requests hand their record to a channel and go on; one task writes and
//! flushes the lines, so a slow disk never holds up the API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Records waiting for the writer before new ones are dropped (and counted
/// in the log as a warning) rather than slowing requests.
const QUEUE: usize = 10_000;

/// One mutating request and how it ended.
pub struct Record<'a> {
    pub user: &'a crate::auth::UserInfo,
    pub verb: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub source: Option<SocketAddr>,
    pub user_agent: &'a str,
    pub code: tonic::Code,
    pub received: SystemTime,
    pub latency: Duration,
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<String>,
}

impl AuditLog {
    /// Opens (appends to) `path` and starts the writer task.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            while let Some(line) = rx.recv().await {
                let mut batch = vec![line];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for line in batch {
                    if out.write_all(line.as_bytes()).await.is_err() {
                        tracing::error!("writing the audit log failed");
                    }
                }
                let _ = out.flush().await;
            }
        });
        Ok(Self { tx })
    }

    pub fn record(&self, r: &Record<'_>) {
        let mut line = event(r).to_string();
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            tracing::warn!(verb = r.verb, kind = r.kind, name = r.name, "audit log queue full: record dropped");
        }
    }
}

fn event(r: &Record<'_>) -> serde_json::Value {
    let info = skiff_api::KindInfo::by_kind(r.kind).ok();
    let (group, version) = match info.map(|i| i.api_version.split_once('/')) {
        Some(Some((g, v))) => (g, v),
        Some(None) => ("", info.map_or("", |i| i.api_version)),
        None => ("", ""),
    };
    let received = chrono::DateTime::<chrono::Utc>::from(r.received);
    let done = chrono::DateTime::<chrono::Utc>::from(r.received + r.latency);
    json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": uuid::Uuid::new_v4().to_string(),
        "stage": "ResponseComplete",
        "verb": r.verb,
        "user": {"username": r.user.name, "uid": r.user.uid, "groups": r.user.groups},
        "sourceIPs": r.source.map(|s| vec![s.ip().to_string()]).unwrap_or_default(),
        "userAgent": r.user_agent,
        "objectRef": {
            "resource": info.map_or(r.kind, |i| i.plural),
            "namespace": r.namespace,
            "name": r.name,
            "apiGroup": group,
            "apiVersion": version,
        },
        "responseStatus": {"code": http_code(r.verb, r.code), "grpcCode": format!("{:?}", r.code)},
        "requestReceivedTimestamp": received.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "stageTimestamp": done.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
}

/// The HTTP status Kubernetes would have answered with.
fn http_code(verb: &str, code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Ok if verb == "create" => 201,
        Code::Ok => 200,
        Code::InvalidArgument => 422,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::FailedPrecondition | Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::OutOfRange => 410,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_a_kubernetes_audit_event() {
        let user = crate::auth::UserInfo { name: "alice".into(), uid: String::new(), groups: vec!["dev".into()] };
        let r = Record {
            user: &user,
            verb: "create",
            kind: "Deployment",
            namespace: "demo",
            name: "web",
            source: Some("10.0.0.7:5123".parse().unwrap()),
            user_agent: "skiffctl",
            code: tonic::Code::Ok,
            received: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            latency: Duration::from_millis(3),
        };
        let e = event(&r);
        assert_eq!(e["verb"], "create");
        assert_eq!(e["user"]["username"], "alice");
        assert_eq!(e["user"]["groups"][0], "dev");
        assert_eq!(e["objectRef"]["resource"], "deployments");
        assert_eq!(e["objectRef"]["apiGroup"], "apps");
        assert_eq!(e["objectRef"]["apiVersion"], "v1");
        assert_eq!(e["objectRef"]["name"], "web");
        assert_eq!(e["sourceIPs"][0], "10.0.0.7");
        assert_eq!(e["responseStatus"]["code"], 201);
        assert_eq!(e["requestReceivedTimestamp"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(e["stageTimestamp"], "2023-11-14T22:13:20.003000Z");
        let conflict = Record { verb: "update", code: tonic::Code::Aborted, ..r };
        assert_eq!(event(&conflict)["responseStatus"]["code"], 409);
    }
}
