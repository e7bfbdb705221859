//! Cargo only runs the test files tests/Cargo.toml lists (`autotests` finds
//! nothing here: this package's own tests/ folder would be tests/tests/).
//! A file added without its `[[test]]` entry would never run; this test
//! fails instead.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn every_test_file_is_a_listed_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("read tests/Cargo.toml");
    let listed: BTreeSet<String> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path = "))
        .map(|p| p.trim_matches('"').to_string())
        .collect();
    // Subfolders (support/) hold modules the tests include, not tests.
    let files: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("list tests/")
        .map(|e| e.expect("a tests/ entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let unlisted: Vec<&String> = files.difference(&listed).collect();
    let missing: Vec<&String> = listed.difference(&files).collect();
    assert!(unlisted.is_empty(), "test files without a [[test]] entry in tests/Cargo.toml: {unlisted:?}");
    assert!(missing.is_empty(), "[[test]] entries without their file: {missing:?}");
}
