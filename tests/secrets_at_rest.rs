//! Secrets encrypted at rest: the apiserver with an EncryptionConfiguration
//! stores Secrets in etcd as AES-GCM ciphertext (read back here straight
//! from etcd), serves them as plaintext, and re-encrypts them with the new
//! first key after a rotation and a restart.

use serde_json::json;
use skiff_testkit::{Cluster, ClusterOptions};

/// An EncryptionConfiguration with AES-GCM keys `(name, fill byte)`, the
/// first one writing, and identity readable last.
fn config(keys: &[(&str, u8)]) -> String {
    // base64 of 32 equal bytes: 42 characters of the byte's sextet pattern
    // are easy to get wrong by hand, so encode through serde's ByteString.
    let keys: String = keys
        .iter()
        .map(|(name, fill)| {
            let b64 = serde_json::to_value(k8s_openapi::ByteString(vec![*fill; 32])).unwrap();
            format!("      - name: {name}\n        secret: {}\n", b64.as_str().unwrap())
        })
        .collect();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n{keys}  - identity: {{}}\n"
    )
}

async fn raw(cluster: &Cluster, key: &str) -> Vec<u8> {
    let mut etcd = cluster.etcd_client().await.unwrap();
    let resp = etcd.get(key, None).await.unwrap();
    resp.kvs().first().map(|kv| kv.value().to_vec()).expect("the key is in etcd")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_are_ciphertext_in_etcd_and_rotate_to_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encryption.yaml");
    std::fs::write(&path, config(&[("key1", 1)])).unwrap();
    let options = ClusterOptions {
        apiserver_args: vec![format!("--encryption-provider-config={}", path.display())],
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(options).await.expect("start cluster");
    let client = cluster.client();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
        "data": {"password": "aHVudGVyMg=="}});
    client.create("Secret", "default", &secret).await.unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}, "data": {"k": "visible"}});
    client.create("ConfigMap", "default", &cm).await.unwrap();

    let stored = raw(&cluster, "/registry/secrets/default/db").await;
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"), "{:?}", String::from_utf8_lossy(&stored[..30]));
    assert!(!contains(&stored, "aHVudGVyMg") && !contains(&stored, "password"), "plaintext in etcd");
    assert!(contains(&raw(&cluster, "/registry/configmaps/default/plain").await, "visible"), "only Secrets are sealed");
    // Served as plaintext, by get and by list (the watch cache, fed by the watch).
    let got = client.get("Secret", "default", "db").await.unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMg==");
    let listed = client.list("Secret", "default", &Default::default()).await.unwrap();
    assert!(listed.items.iter().any(|s| s["data"]["password"] == "aHVudGVyMg=="), "{:?}", listed.items);

    // Rotate: key2 first, key1 still readable; the restart re-encrypts.
    std::fs::write(&path, config(&[("key2", 2), ("key1", 1)])).unwrap();
    cluster.restart_apiserver().await.expect("restart the apiserver with key2");
    let stored = raw(&cluster, "/registry/secrets/default/db").await;
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key2:"), "{:?}", String::from_utf8_lossy(&stored[..30]));
    let got = cluster.client().get("Secret", "default", "db").await.unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMg==");

    // key1 gone: what it wrote is gone too, so everything still reads.
    std::fs::write(&path, config(&[("key2", 2)])).unwrap();
    cluster.restart_apiserver().await.expect("restart the apiserver without key1");
    let got = cluster.client().get("Secret", "default", "db").await.unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMg==");
}

#[tokio::test]
async fn a_bad_encryption_configuration_stops_the_apiserver_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encryption.yaml");
    std::fs::write(
        &path,
        "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: c2hvcnQ=\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let options = ClusterOptions {
        state_dir: Some(state.clone()),
        apiserver_args: vec![format!("--encryption-provider-config={}", path.display())],
        ..Default::default()
    };
    assert!(Cluster::start_with(options).await.is_err(), "the apiserver must refuse a 5-byte key");
    let log = std::fs::read_to_string(state.join("logs/skiff-apiserver.log")).unwrap();
    assert!(log.contains("providers[0].aesgcm.keys[0].secret: must be 32 bytes"), "{log}");
}
