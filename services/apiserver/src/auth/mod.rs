//! Who may call the API: the RBAC policy an authorizer asks per request
//! (`rbac`).

pub mod rbac;
