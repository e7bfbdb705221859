//! skiff-kubelet (being built).
