//! Errors as gRPC statuses: each server maps its own error type to a code
//! in one `From<Error> for Status`, and they all word the message alike.

use tonic::{Code, Status};

/// A status with `code` whose message is `error` followed by each cause
/// it does not already mention: "etcd get failed: connection refused".
pub fn status_with_causes(code: Code, error: &(dyn std::error::Error + 'static)) -> Status {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
        source = s.source();
    }
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("etcd get failed")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("reading x: denied")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn names_each_new_cause_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        let s = status_with_causes(Code::Unavailable, &e);
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "etcd get failed: connection refused"));
        let e = Repeats(std::io::Error::other("denied"));
        assert_eq!(status_with_causes(Code::Internal, &e).message(), "reading x: denied");
    }
}
