//! skiff-controller-manager (being built).
