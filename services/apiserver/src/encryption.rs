//! Encryption at rest, after Kubernetes' EncryptionConfiguration: the
//! resources it names (Secrets) are stored in etcd as AES-256-GCM
//! ciphertext, never as plaintext.
//!
//! The configuration file lists providers in order. The first writes;
//! every one can read, so rotating is: put the new key first, keep the
//! old one after it, restart — the apiserver then re-encrypts what the old
//! key wrote ([`crate::storage::Encrypted::reencrypt`]) — and drop the old
//! key at the next restart. `identity: {}` reads (or, first, writes)
//! plaintext, for switching encryption on or off.
//!
//! A stored value is `k8s:enc:aesgcm:v1:NAME:` + 12-byte nonce + ciphertext
//! and tag, with the etcd key as authenticated data, so ciphertext moved
//! to another key does not decrypt.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// Why an encryption configuration was refused, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    /// Accepted as Kubernetes writes it; nothing depends on its value.
    #[allow(dead_code)]
    api_version: Option<String>,
    kind: Option<String>,
    resources: Vec<ResourceRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceRule {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Provider {
    aesgcm: Option<AesGcm>,
    identity: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AesGcm {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    /// 32 bytes, base64.
    secret: String,
}

/// How one resource's values are turned into what etcd holds and back.
pub struct Transformer {
    /// The name of the key new writes use (one of `keys`); None when
    /// `identity` comes first.
    write: Option<String>,
    keys: HashMap<String, LessSafeKey>,
    /// `identity` is among the providers: plaintext reads are allowed.
    plaintext_readable: bool,
    rng: SystemRandom,
}

/// The resources encrypted (plural names, `secrets`) and their transformers.
pub struct Encryption {
    pub resources: HashMap<String, Transformer>,
}

impl Encryption {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        Self::parse(&text).map_err(|reason| ConfigError::Invalid { path: p, reason })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if file.kind.as_deref().is_some_and(|k| k != "EncryptionConfiguration") {
            return Err(format!("kind: {:?} must be EncryptionConfiguration", file.kind.unwrap_or_default()));
        }
        let mut resources = HashMap::new();
        for (i, rule) in file.resources.iter().enumerate() {
            for (j, resource) in rule.resources.iter().enumerate() {
                if resource != "secrets" {
                    return Err(format!("resources[{i}].resources[{j}]: {resource:?}: only secrets can be encrypted"));
                }
                let transformer = Transformer::new(&rule.providers, &format!("resources[{i}].providers"))?;
                if resources.insert(resource.clone(), transformer).is_some() {
                    return Err(format!("resources[{i}].resources[{j}]: {resource:?} is listed twice"));
                }
            }
        }
        Ok(Self { resources })
    }
}

impl Transformer {
    fn new(providers: &[Provider], at: &str) -> Result<Self, String> {
        if providers.is_empty() {
            return Err(format!("{at}: at least one provider is required"));
        }
        let mut write = None;
        let mut keys = HashMap::new();
        let mut plaintext_readable = false;
        for (i, provider) in providers.iter().enumerate() {
            match (&provider.aesgcm, &provider.identity) {
                (Some(aes), None) => {
                    if aes.keys.is_empty() {
                        return Err(format!("{at}[{i}].aesgcm.keys: at least one key is required"));
                    }
                    for (j, entry) in aes.keys.iter().enumerate() {
                        let key = parse_key(entry, &format!("{at}[{i}].aesgcm.keys[{j}]"))?;
                        if i == 0 && j == 0 {
                            write = Some(entry.name.clone());
                        }
                        if keys.insert(entry.name.clone(), key).is_some() {
                            return Err(format!("{at}[{i}].aesgcm.keys[{j}].name: {:?} is listed twice", entry.name));
                        }
                    }
                }
                (None, Some(_)) => plaintext_readable = true,
                _ => return Err(format!("{at}[{i}]: exactly one of aesgcm, identity")),
            }
        }
        Ok(Self { write, keys, plaintext_readable, rng: SystemRandom::new() })
    }

    /// What etcd stores for `plain` at `key`.
    pub fn encrypt(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let Some(name) = &self.write else { return Ok(plain.to_vec()) };
        let cipher = &self.keys[name];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| "no randomness for a nonce".to_string())?;
        let mut sealed = plain.to_vec();
        cipher
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut sealed)
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of what etcd holds at `key`.
    pub fn decrypt(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return if self.plaintext_readable {
                Ok(stored.to_vec())
            } else {
                Err("stored unencrypted, and identity is not among the providers".into())
            };
        };
        let colon = rest.iter().position(|b| *b == b':').ok_or("malformed encrypted value")?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let cipher =
            self.keys.get(&name).ok_or_else(|| format!("encrypted with key {name:?}, which is not configured"))?;
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN {
            return Err("malformed encrypted value".into());
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "malformed nonce".to_string())?;
        let mut buf = sealed.to_vec();
        let plain = cipher
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| format!("does not decrypt with key {name:?}"))?;
        Ok(plain.to_vec())
    }

    /// Whether a stored value was written by anything but the write provider.
    pub fn is_stale(&self, stored: &[u8]) -> bool {
        match (&self.write, stored.strip_prefix(PREFIX)) {
            (None, rest) => rest.is_some(),
            (Some(_), None) => true,
            (Some(name), Some(rest)) => !rest.starts_with(format!("{name}:").as_bytes()),
        }
    }
}

fn parse_key(entry: &KeyEntry, at: &str) -> Result<LessSafeKey, String> {
    if entry.name.is_empty() || entry.name.contains(':') {
        return Err(format!("{at}.name: {:?} must be non-empty and hold no ':'", entry.name));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry.secret.trim())
        .map_err(|e| format!("{at}.secret: not base64: {e}"))?;
    if bytes.len() != 32 {
        return Err(format!("{at}.secret: must be 32 bytes (AES-256), is {}", bytes.len()));
    }
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!("{at}.secret: not an AES-256 key"))?;
    Ok(LessSafeKey::new(unbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_b64(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    fn config(providers: &str) -> Transformer {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        );
        Encryption::parse(&text).unwrap().resources.remove("secrets").unwrap()
    }

    fn aes(keys: &[(&str, u8)]) -> String {
        let keys: String =
            keys.iter().map(|(n, b)| format!("      - name: {n}\n        secret: {}\n", key_b64(*b))).collect();
        format!("  - aesgcm:\n      keys:\n{keys}")
    }

    #[test]
    fn round_trips_and_binds_the_ciphertext_to_its_key() {
        let t = config(&aes(&[("key1", 1)]));
        let stored = t.encrypt("/registry/secrets/a/s", b"hunter2").unwrap();
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!stored.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(t.decrypt("/registry/secrets/a/s", &stored).unwrap(), b"hunter2");
        assert!(t.decrypt("/registry/secrets/b/s", &stored).is_err(), "moved to another key, it must not decrypt");
        assert!(t.decrypt("/registry/secrets/a/s", b"{\"plain\":1}").is_err(), "no identity provider");
    }

    #[test]
    fn rotation_reads_old_keys_writes_the_first_and_knows_what_is_stale() {
        let old = config(&aes(&[("key1", 1)]));
        let written = old.encrypt("k", b"v").unwrap();
        let rotated = config(&format!("{}  - identity: {{}}\n", aes(&[("key2", 2), ("key1", 1)])));
        assert_eq!(rotated.decrypt("k", &written).unwrap(), b"v");
        assert!(rotated.is_stale(&written));
        assert!(rotated.is_stale(b"plain"));
        assert_eq!(rotated.decrypt("k", b"plain").unwrap(), b"plain", "identity reads plaintext");
        let fresh = rotated.encrypt("k", b"v").unwrap();
        assert!(fresh.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        assert!(!rotated.is_stale(&fresh));
        let err = config(&aes(&[("key3", 3)])).decrypt("k", &written).unwrap_err();
        assert!(err.contains("key1"), "{err}");
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let bad = |providers: &str| {
            let text =
                format!("kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}");
            Encryption::parse(&text).err().unwrap()
        };
        let short = format!("  - aesgcm:\n      keys:\n      - name: k\n        secret: {}\n", "c2hvcnQ=");
        assert!(bad(&short).contains("providers[0].aesgcm.keys[0].secret: must be 32 bytes"), "{}", bad(&short));
        assert!(bad("  - aesgcm:\n      keys: []\n").contains("providers[0].aesgcm.keys"));
        let pods = "kind: EncryptionConfiguration\nresources:\n- resources: [pods]\n  providers:\n  - identity: {}\n";
        assert!(Encryption::parse(pods).err().unwrap().contains("only secrets"));
    }
}
