//! Integration tests: scheduler (being written).
