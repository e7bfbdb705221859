pub mod api;
pub mod pod_startup;
pub mod scheduler;
