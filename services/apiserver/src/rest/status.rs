//! Failures as Kubernetes `Status` objects with the HTTP code and reason
//! kube-apiserver answers with. The gRPC status of the shared call path is
//! the input: its code, and the reason and field causes the apiserver's
//! `Error` put in its details (`StatusDetails`).

use http::StatusCode;
use serde_json::{json, Value};
use tonic::Code;

use super::path::Target;
use crate::error::StatusDetails;

/// A failed request: the HTTP code and the Status body.
#[derive(Debug)]
pub struct Failure {
    pub code: StatusCode,
    pub body: Value,
}

impl Failure {
    pub fn new(code: StatusCode, reason: &str, message: impl Into<String>) -> Failure {
        let message = message.into();
        Failure { code, body: status_body(code, reason, &message, None, &[]) }
    }

    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn method_not_allowed(what: &str) -> Failure {
        Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on {what}"),
        )
    }

    /// The Failure a gRPC status from the shared call path stands for.
    pub fn from_status(status: &tonic::Status, target: Option<&Target>) -> Failure {
        let details = StatusDetails::of(status).unwrap_or_default();
        let (code, fallback) = match status.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "BadRequest"),
            Code::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "AlreadyExists"),
            Code::Aborted => (StatusCode::CONFLICT, "Conflict"),
            Code::OutOfRange => (StatusCode::GONE, "Expired"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "Forbidden"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "Conflict"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            Code::Unimplemented => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let (code, reason) = match details.reason.as_str() {
            "" => (code, fallback),
            "Invalid" => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            "RequestEntityTooLarge" => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            "Forbidden" => (StatusCode::FORBIDDEN, "Forbidden"),
            "BadRequest" => (StatusCode::BAD_REQUEST, "BadRequest"),
            _ => (code, fallback),
        };
        Failure { code, body: status_body(code, reason, status.message(), target, &details.causes) }
    }

    pub fn retry_after(&self) -> Option<u32> {
        matches!(self.code, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE).then_some(1)
    }
}

fn status_body(
    code: StatusCode,
    reason: &str,
    message: &str,
    target: Option<&Target>,
    causes: &[(String, String)],
) -> Value {
    let mut details = json!({});
    if let Some(t) = target {
        if let Some(name) = &t.name {
            details["name"] = name.as_str().into();
        }
        details["group"] = t.info.group().into();
        details["kind"] = t.info.plural.into();
    }
    if !causes.is_empty() {
        details["causes"] = causes
            .iter()
            .map(|(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field}))
            .collect();
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code.as_u16(),
    })
}

/// A Status of success, as deletes of collections and subresource posts answer.
pub fn success(target: &Target) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": target.name.clone().unwrap_or_default(), "group": target.info.group(), "kind": target.info.plural},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn invalid_objects_are_422_with_their_fields() {
        let error = Error::Invalid {
            kind: "Deployment",
            name: "web".into(),
            source: skiff_api::Error::field("spec.replicas", "must be greater than or equal to 0"),
        };
        let failure = Failure::from_status(&tonic::Status::from(error), None);
        assert_eq!(failure.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(failure.body["reason"], "Invalid");
        assert_eq!(failure.body["details"]["causes"][0]["field"], "spec.replicas");
        assert_eq!(failure.body["code"], 422);
    }

    #[test]
    fn codes_follow_kubernetes() {
        let cases = [
            (Error::NotFound { resource: "pods".into(), name: "x".into() }, 404, "NotFound"),
            (Error::AlreadyExists { resource: "pods".into(), name: "x".into() }, 409, "AlreadyExists"),
            (Error::Conflict { resource: "pods".into(), name: "x".into() }, 409, "Conflict"),
            (Error::Expired { requested: 1, compacted: 5 }, 410, "Expired"),
            (Error::Denied("no".into()), 403, "Forbidden"),
            (Error::NamespaceTerminating("ns".into()), 403, "Forbidden"),
            (Error::BadRequest("bad".into()), 400, "BadRequest"),
            (Error::ShuttingDown, 503, "ServiceUnavailable"),
        ];
        for (error, code, reason) in cases {
            let failure = Failure::from_status(&tonic::Status::from(error), None);
            assert_eq!((failure.code.as_u16(), failure.body["reason"].as_str()), (code, Some(reason)));
        }
        let unauthenticated = Failure::from_status(&tonic::Status::unauthenticated("who?"), None);
        assert_eq!(unauthenticated.code, StatusCode::UNAUTHORIZED);
    }
}
