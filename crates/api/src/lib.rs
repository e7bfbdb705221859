//! skiff's resource model, shared by every component: the generated gRPC API,
//! the registry of kinds skiff serves, and the pure (no IO) rules the apiserver
//! applies to an object before storing it — decoding with field paths,
//! defaulting, validation — plus label and field selectors.
#![forbid(unsafe_code)]

pub mod admission;
pub mod apply;
pub mod cidr;
pub mod clock;
pub mod columns;
pub mod cron;
mod defaults;
pub mod duration;
mod error;
pub mod kinds;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod quantity;
pub mod quota;
pub mod references;
pub mod resources;
pub mod scheduling;
pub mod selector;
mod validation;
pub mod well_known;

pub use admission::{decode_typed, normalize};
pub use duration::{parse_duration, parse_period};
pub use error::{Error, FieldError};
pub use kinds::{KindInfo, KINDS};
pub use selector::{FieldSelector, LabelSelector};
pub use validation::dns_subdomain_problem;

/// The largest object the apiserver stores, as Kubernetes allows (etcd's
/// default request limit is 1.5 MiB).
pub const MAX_OBJECT_BYTES: usize = 1_572_864;

/// Why `name` is not a valid object name (a DNS-1123 subdomain), if it is not.
pub fn validation_problem_for_name(name: &str) -> Option<String> {
    validation::dns_subdomain_problem(name)
}

/// Code generated from `proto/skiff/v1/objects.proto` and `kubelet.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("skiff.v1");
}
