//! skiff-scheduler (being built).
