use std::fmt;

/// One problem with one field of an object, named by its JSON path
/// (`spec.template.spec.containers[0].image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why the resource model refused an object or a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("apiVersion {api_version:?} does not serve kind {kind} (expected {expected:?})")]
    WrongApiVersion { kind: String, api_version: String, expected: String },
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("object is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid {what} selector {selector:?}: {reason}")]
    Selector { what: &'static str, selector: String, reason: String },
}

impl Error {
    pub fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid(vec![FieldError::new(path, message)])
    }
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
