pub mod api;
pub mod compose_up;
pub mod dns;
pub mod ingress;
pub mod overlay_throughput;
pub mod pod_startup;
pub mod scheduler;
pub mod service_rules;
