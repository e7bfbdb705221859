//! ServiceAccount tokens: JWTs the apiserver signs (ES256, with the key of
//! `--service-account-key-file`) for a ServiceAccount, optionally bound to
//! one pod, with an audience and an expiry — the tokens kubelets project
//! into pods (TokenRequest) — and their verification when a client
//! presents one. A token is good only while what it names exists: the
//! ServiceAccount (and pod) with the UIDs it was issued for.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use super::{UserInfo, AUTHENTICATED};

/// The user a ServiceAccount's token authenticates as starts with this.
pub const USER_PREFIX: &str = "system:serviceaccount:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEM PKCS#8 ECDSA P-256 private key ({reason})")]
    Invalid { path: String, reason: String },
}

/// The claims of a token, as Kubernetes writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Bound,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// Signs and verifies ServiceAccount tokens.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    pub issuer: String,
    /// What tokens presented to this apiserver must be for (one of).
    pub audiences: Vec<String>,
}

impl TokenSigner {
    pub fn load(path: &Path, issuer: String, audiences: Vec<String>) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        let invalid = |reason: String| KeyError::Invalid { path: path.display().to_string(), reason };
        // PKCS#8, or SEC1 (`EC PRIVATE KEY`) as openssl and Helm write it.
        let der = skiff_pki::keys::pkcs8_der(&text).map_err(|e| invalid(e.to_string()))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self { key, rng, issuer, audiences })
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let body = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(body));
        let sig = self.key.sign(&self.rng, signing_input.as_bytes()).map_err(|e| e.to_string())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }

    /// The claims of `token` if this apiserver signed it, it is for one of
    /// its audiences, and it is valid now.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, &'static str> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT");
        };
        let header: serde_json::Value = decode_json(header).ok_or("malformed header")?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err("unexpected signing algorithm");
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "malformed signature")?;
        let public =
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        // What was signed: everything before the last dot (three parts, checked above).
        let signed = token.rsplit_once('.').map_or("", |(signed, _)| signed);
        public.verify(signed.as_bytes(), &sig).map_err(|_| "bad signature")?;
        let claims: Claims = decode_json(body).ok_or("malformed claims")?;
        if claims.iss != self.issuer {
            return Err("issued by someone else");
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err("for another audience");
        }
        if now >= claims.exp {
            return Err("expired");
        }
        if now + CLOCK_SKEW < claims.nbf {
            return Err("not valid yet");
        }
        Ok(claims)
    }
}

/// Clocks of hosts differ a little.
const CLOCK_SKEW: i64 = 60;

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The user a ServiceAccount token authenticates as, with Kubernetes'
/// groups for ServiceAccounts.
pub fn user_of(claims: &Claims) -> UserInfo {
    let ns = &claims.kubernetes.namespace;
    UserInfo {
        name: format!("{USER_PREFIX}{ns}:{}", claims.kubernetes.serviceaccount.name),
        uid: claims.kubernetes.serviceaccount.uid.clone(),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), AUTHENTICATED.into()],
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(dir: &Path) -> TokenSigner {
        let key = rcgen::KeyPair::generate().unwrap();
        let path = dir.join("sa.key");
        std::fs::write(&path, key.serialize_pem()).unwrap();
        TokenSigner::load(&path, "https://skiff".into(), vec!["https://skiff".into()]).unwrap()
    }

    fn claims(aud: &str, exp: i64) -> Claims {
        Claims {
            iss: "https://skiff".into(),
            sub: "system:serviceaccount:demo:app".into(),
            aud: vec![aud.into()],
            exp,
            iat: 1000,
            nbf: 1000,
            kubernetes: Bound {
                namespace: "demo".into(),
                serviceaccount: Ref { name: "app".into(), uid: "u1".into() },
                pod: None,
            },
        }
    }

    #[test]
    fn an_ec_private_key_in_sec1_form_signs_too() {
        // `openssl ecparam -genkey -noout`, the form Helm's genPrivateKey writes.
        let sec1 = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIOLBcyEpHE9U1fU9nq+s/vRymiE4wJhoRj+aLVqabhwfoAoGCCqGSM49
AwEHoUQDQgAErk2V0HXYyfUBS4KBC/t2vGqGLk2Nnt1RX8UGWv8EzN3sFfSBAeha
oNaxn5Rdz0P7FkwjIW85CwWEH9f2+OG0+w==
-----END EC PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        std::fs::write(&path, sec1).unwrap();
        let s = TokenSigner::load(&path, "https://skiff".into(), vec!["https://skiff".into()]).unwrap();
        let token = s.sign(&claims("https://skiff", 2000)).unwrap();
        assert!(s.verify(&token, 1500).is_ok());
        std::fs::write(&path, "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n").unwrap();
        assert!(TokenSigner::load(&path, "https://skiff".into(), vec![]).is_err());
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path());
        let token = s.sign(&claims("https://skiff", 2000)).unwrap();
        let got = s.verify(&token, 1500).unwrap();
        assert_eq!(got, claims("https://skiff", 2000));
        assert_eq!(user_of(&got).name, "system:serviceaccount:demo:app");
        assert_eq!(user_of(&got).groups[1], "system:serviceaccounts:demo");
        assert_eq!(s.verify(&token, 2000), Err("expired"));
    }

    #[test]
    fn foreign_audiences_tampering_and_other_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(dir.path());
        let other_dir = tempfile::tempdir().unwrap();
        let other = signer(other_dir.path());
        let foreign = s.sign(&claims("https://elsewhere", 2000)).unwrap();
        assert_eq!(s.verify(&foreign, 1500), Err("for another audience"));
        let token = s.sign(&claims("https://skiff", 2000)).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.rsplit_once('.').unwrap();
        let mut forged_claims = claims("https://skiff", 2000);
        forged_claims.kubernetes.namespace = "kube-system".into();
        let forged = format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap()));
        assert_eq!(s.verify(&forged, 1500), Err("bad signature"));
        let by_other = other.sign(&claims("https://skiff", 2000)).unwrap();
        assert_eq!(s.verify(&by_other, 1500), Err("bad signature"));
        assert_eq!(s.verify("a.b", 1500), Err("not a JWT"));
    }
}
