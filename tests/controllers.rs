//! Integration tests: controllers (being written).
