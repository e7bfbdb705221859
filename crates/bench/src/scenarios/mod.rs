pub mod api;
pub mod scheduler;
