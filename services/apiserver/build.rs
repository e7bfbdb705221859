//! Compiles the Kubernetes API's protobuf definitions (vendored under
//! `proto/k8s.io`) into a descriptor set: what the REST front decodes
//! `application/vnd.kubernetes.protobuf` request bodies with.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let k8s = root.join("k8s.io");
    println!("cargo:rerun-if-changed={}", k8s.display());
    let mut files = Vec::new();
    collect(&k8s, &mut files);
    files.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("k8s.descriptor.bin");
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into());
    let status = Command::new(&protoc)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("--proto_path={}", root.display()))
        .args(files.iter().map(|f| f.strip_prefix(&root).expect("under proto/")))
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("running {protoc} (install protobuf-compiler): {e}"));
    assert!(status.success(), "{protoc} failed on proto/k8s.io");
}

fn collect(dir: &std::path::Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("proto/k8s.io is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
}
