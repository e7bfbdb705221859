//! Who may call the API: the RBAC policy an authorizer asks per request
//! (`rbac`) and the default policy the apiserver creates at start
//! (`bootstrap`).

pub mod bootstrap;
pub mod rbac;
