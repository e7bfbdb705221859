pub mod api;
pub mod dns;
pub mod pod_startup;
pub mod scheduler;
