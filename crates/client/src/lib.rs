//! The one way skiff components and the CLI talk to the apiserver: a typed
//! client over the generic `Objects` gRPC API, where to find the server, and
//! the controller machinery built on it (informers, the work queue, leader
//! election).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod changes;
pub mod channel;
mod client;
pub mod config;
pub mod controller;
mod error;
pub mod events;
#[cfg(any(test, feature = "testkit"))]
pub mod fake_server;
pub mod informer;
pub mod leader;
pub mod workqueue;

pub use backoff::{Backoff, Retry};
pub use changes::Changes;
pub use client::{Api, Client, ListParams, ObjectList, WatchEvent};
pub use config::{ApiFlags, ClientConfig};
pub use controller::{
    run_controller, trace_parent_of, wait_all_synced, Action, CacheSync, Controller, Outcome, Reconcile,
};
pub use error::Error;
pub use events::{EventRecorder, EventType, ObjectRef};
pub use informer::{key_of, Informer, InformerEvent, Object, Store};
pub use leader::{LeaderElectionFlags, LeaderElector, LeaseTimings};
pub use workqueue::WorkQueue;

pub type Result<T, E = Error> = std::result::Result<T, E>;
