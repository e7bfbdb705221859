//! The official Python `kubernetes` client (from PyPI, installed by
//! `scripts/install-deps`), unmodified, against skiff's REST API on a
//! cluster running real containers: `tests/python/client.py` does CRUD on
//! several kinds, a watch and its resumption, patches, the scale
//! subresource and a pod's log, and checks the refusals.
//!
//! Needs root and `scripts/install-deps`; build first:
//! `cargo build --workspace --bins && cargo test -p skiff-tests --test python_client`.

use std::process::Command;

use skiff_testkit::runtime::BUSYBOX_IMAGE;
use skiff_testkit::Cluster;

#[tokio::test]
async fn the_python_client_works_unmodified() {
    let cluster =
        Cluster::start_with_workers("python-node").await.expect("start a cluster with a runtime and a kubelet");
    let image = cluster.runtime().expect("the runtime").registry().image(BUSYBOX_IMAGE);
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig, "skiff").expect("write the kubeconfig");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join("client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).arg(&kubeconfig).arg(image).env("HOME", home.path()).output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "client.py failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.lines().last(), Some("ok"), "{stdout}\n{stderr}");
}
