//! Integration tests: hollow (being written).
