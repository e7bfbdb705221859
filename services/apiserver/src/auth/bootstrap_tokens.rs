//! Bootstrap tokens, as kubeadm's: a token `ID.SECRET` (6 and 16 of
//! `[a-z0-9]`) is valid while the Secret `kube-system/bootstrap-token-ID`
//! of type `bootstrap.kubernetes.io/token` holds that secret, says
//! `usage-bootstrap-authentication: "true"` and has not reached its
//! `expiration`. It authenticates as `system:bootstrap:ID` in
//! `system:bootstrappers` (and the Secret's `auth-extra-groups`), whom the
//! default policy lets do one thing: ask for a node certificate. Deleting
//! the Secret revokes the token at once.
//!
//! Read from this apiserver's Secret cache: no etcd round trip per call.

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;
use skiff_api::well_known::{
    BOOTSTRAPPERS_GROUP, BOOTSTRAP_TOKEN_SECRET_PREFIX, BOOTSTRAP_TOKEN_SECRET_TYPE, BOOTSTRAP_USER_PREFIX,
};
use skiff_api::KindInfo;

use super::{UserInfo, AUTHENTICATED};
use crate::registry::Registry;

const NAMESPACE: &str = "kube-system";

/// Whether `token` has a bootstrap token's shape (`abcdef.0123456789abcdef`).
pub fn is_bootstrap_token(token: &str) -> bool {
    let lower_alnum = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    matches!(token.split_once('.'), Some((id, secret)) if id.len() == 6 && secret.len() == 16 && lower_alnum(id) && lower_alnum(secret))
}

pub struct BootstrapTokens {
    registry: Arc<Registry>,
}

impl BootstrapTokens {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The user `token` authenticates as, or why not.
    pub fn user(&self, token: &str, now: chrono::DateTime<chrono::Utc>) -> Result<UserInfo, &'static str> {
        let (id, secret) = token.split_once('.').ok_or("not a bootstrap token")?;
        let info = KindInfo::by_kind("Secret").map_err(|_| "Secrets are not served")?;
        let key = info.key(NAMESPACE, &format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}"));
        let stored = self.registry.cache(info).get(&key).ok_or("no such bootstrap token")?;
        let stored: Value = serde_json::from_slice(&stored.json).map_err(|_| "its Secret does not decode")?;
        check(&stored, id, secret, now)?;
        let mut groups = vec![BOOTSTRAPPERS_GROUP.to_string()];
        groups.extend(
            field(&stored, "auth-extra-groups")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_string),
        );
        groups.push(AUTHENTICATED.to_string());
        Ok(UserInfo { name: format!("{BOOTSTRAP_USER_PREFIX}{id}"), uid: String::new(), groups })
    }
}

/// The Secret's verdict on `id.secret` at `now`.
fn check(stored: &Value, id: &str, secret: &str, now: chrono::DateTime<chrono::Utc>) -> Result<(), &'static str> {
    if stored["type"] != BOOTSTRAP_TOKEN_SECRET_TYPE {
        return Err("its Secret is not of type bootstrap.kubernetes.io/token");
    }
    if stored["metadata"]["deletionTimestamp"].is_string() {
        return Err("its Secret is being deleted");
    }
    if field(stored, "token-id").as_deref() != Some(id) {
        return Err("its Secret names another token");
    }
    let held = field(stored, "token-secret").unwrap_or_default();
    if !same_secret(held.as_bytes(), secret.as_bytes()) {
        return Err("wrong secret");
    }
    if field(stored, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("not usable for authentication");
    }
    if let Some(expiration) = field(stored, "expiration") {
        let expires = chrono::DateTime::parse_from_rfc3339(&expiration).map_err(|_| "its expiration does not parse")?;
        if expires <= now {
            return Err("expired");
        }
    }
    Ok(())
}

/// Compares in time that depends on the length only, so the answer's
/// timing tells a guesser nothing about how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// One of the Secret's `data` values, decoded.
fn field(secret: &Value, name: &str) -> Option<String> {
    let encoded = secret["data"][name].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(expiration: &str) -> Value {
        json!({"type": BOOTSTRAP_TOKEN_SECRET_TYPE, "metadata": {"name": "bootstrap-token-abcdef"},
               "data": {"token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"),
                        "usage-bootstrap-authentication": b64("true"), "expiration": b64(expiration)}})
    }

    fn at(t: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(t).unwrap().into()
    }

    #[test]
    fn the_shape_of_a_bootstrap_token() {
        assert!(is_bootstrap_token("abcdef.0123456789abcdef"));
        for not in ["abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef0123456789abcdef", "a.b.c", ""] {
            assert!(!is_bootstrap_token(not), "{not}");
        }
    }

    #[test]
    fn a_token_is_valid_until_it_expires_and_only_with_its_secret() {
        let stored = secret("2026-12-08T00:00:00Z");
        assert_eq!(check(&stored, "abcdef", "0123456789abcdef", at("2026-12-07T12:00:00Z")), Ok(()));
        assert_eq!(check(&stored, "abcdef", "0123456789abcdeX", at("2026-12-07T12:00:00Z")), Err("wrong secret"));
        assert_eq!(check(&stored, "abcdef", "0123456789abcdef", at("2026-12-08T00:00:00Z")), Err("expired"));
        let mut wrong_type = stored.clone();
        wrong_type["type"] = "Opaque".into();
        assert!(check(&wrong_type, "abcdef", "0123456789abcdef", at("2026-12-07T12:00:00Z")).is_err());
        let mut not_for_auth = stored;
        not_for_auth["data"]["usage-bootstrap-authentication"] = b64("false").into();
        assert!(check(&not_for_auth, "abcdef", "0123456789abcdef", at("2026-12-07T12:00:00Z")).is_err());
    }
}
