//! TLS: certificates from `kubernetes.io/tls` Secrets, picked by SNI.
//!
//! The [`Certs`] table maps each host of an Ingress's `tls` section to the
//! certificate of the Secret it names; it is rebuilt with the route table
//! and swapped in, so a renewed Secret takes effect for the next handshake
//! while connections already open keep theirs. A Secret that does not hold
//! a valid certificate and matching key leaves the host with the
//! certificate it had (or none), and is reported on the Ingress; other
//! hosts are unaffected.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub const CERT_KEY: &str = "tls.crt";
pub const PRIVATE_KEY: &str = "tls.key";

/// Parses a Secret's `tls.crt` (chain, leaf first) and `tls.key`, checking
/// that the key is the certificate's.
pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    let data = secret.data.as_ref();
    let field =
        |name: &str| data.and_then(|d| d.get(name)).map(|b| b.0.as_slice()).ok_or_else(|| format!("has no {name}"));
    skiff_pki::certified_key(field(CERT_KEY)?, field(PRIVATE_KEY)?)
        .map_err(|e| format!("{CERT_KEY}, {PRIVATE_KEY}: {e}"))
}

/// A Secret's certificate as last parsed, by resourceVersion, so a rebuild
/// parses only Secrets that changed.
#[derive(Default)]
pub struct ParsedSecrets {
    parsed: HashMap<String, (String, Result<Arc<CertifiedKey>, String>)>,
}

impl ParsedSecrets {
    fn get(&mut self, key: &str, secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        match self.parsed.get(key) {
            Some((v, parsed)) if *v == version && !version.is_empty() => parsed.clone(),
            _ => {
                let parsed = certified_key(secret);
                self.parsed.insert(key.to_string(), (version, parsed.clone()));
                parsed
            }
        }
    }
}

/// Host (lower-case, wildcards as `*.example.com`) → certificate.
#[derive(Default, Debug)]
pub struct Certs {
    by_host: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    /// The certificates of every `tls` host of `ingresses` (oldest Ingress
    /// first wins a host). A host whose Secret is missing or invalid keeps
    /// its certificate from `previous`.
    pub fn build(
        ingresses: &[Arc<Ingress>],
        secret: &dyn Fn(&str) -> Option<Arc<Secret>>,
        previous: &Certs,
        parsed: &mut ParsedSecrets,
    ) -> Self {
        let mut by_host = HashMap::new();
        let mut used = std::collections::HashSet::new();
        for ing in ingresses {
            let namespace = ing.metadata.namespace.as_deref().unwrap_or_default();
            for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) else { continue };
                let key = format!("{namespace}/{name}");
                let cert = secret(&key).and_then(|s| parsed.get(&key, &s).ok());
                used.insert(key);
                for host in tls.hosts.iter().flatten().map(|h| h.to_ascii_lowercase()) {
                    if by_host.contains_key(&host) {
                        continue;
                    }
                    if let Some(cert) = cert.clone().or_else(|| previous.by_host.get(&host).cloned()) {
                        by_host.insert(host, cert);
                    }
                }
            }
        }
        // Secrets no Ingress names any more are not kept parsed.
        parsed.parsed.retain(|key, _| used.contains(key));
        Self { by_host }
    }

    /// The certificate for an SNI name: exact, else the wildcard one label up.
    pub fn find(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.to_ascii_lowercase();
        self.by_host.get(&name).cloned().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.by_host.get(&format!("*.{parent}")).cloned()
        })
    }

    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// Why the Ingress's TLS Secrets cannot be used, one message each.
pub fn secret_problems(ing: &Ingress, secret: &dyn Fn(&str) -> Option<Arc<Secret>>) -> Vec<String> {
    let namespace = ing.metadata.namespace.as_deref().unwrap_or_default();
    let mut problems: Vec<String> = ing
        .spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|tls| tls.secret_name.as_deref().filter(|n| !n.is_empty()))
        .filter_map(|name| {
            let key = format!("{namespace}/{name}");
            match secret(&key) {
                None => Some(format!("secret {key} not found")),
                Some(s) => certified_key(&s).err().map(|why| format!("secret {key} {why}")),
            }
        })
        .collect();
    problems.sort();
    problems.dedup();
    problems
}

/// rustls' certificate lookup, over the current [`Certs`].
#[derive(Debug)]
pub struct SniResolver(pub Arc<ArcSwap<Certs>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Without SNI (an IP literal) there is no host to choose by.
        self.0.load().find(hello.server_name()?)
    }
}

/// The TLS server configuration: certificates by SNI, HTTP/2 and 1.1 by ALPN.
pub fn server_config(certs: Arc<ArcSwap<Certs>>) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn pem_pair(host: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn secret(version: &str, crt: &str, key: &str) -> Arc<Secret> {
        let mut s = Secret::default();
        s.metadata.resource_version = Some(version.into());
        s.data = Some(
            [
                (CERT_KEY.to_string(), ByteString(crt.as_bytes().to_vec())),
                (PRIVATE_KEY.to_string(), ByteString(key.as_bytes().to_vec())),
            ]
            .into(),
        );
        Arc::new(s)
    }

    fn ingress(tls: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "demo"}, "spec": {"tls": tls}}))
                .unwrap(),
        )
    }

    #[test]
    fn a_valid_pair_parses_and_a_mismatched_or_garbled_one_is_refused() {
        let (crt, key) = pem_pair("a.example.test");
        let (_, other_key) = pem_pair("b.example.test");
        assert!(certified_key(&secret("1", &crt, &key)).is_ok());
        let mismatch = certified_key(&secret("1", &crt, &other_key)).unwrap_err();
        assert!(mismatch.contains("does not match"), "{mismatch}");
        let garbled = certified_key(&secret("1", "junk", &key)).unwrap_err();
        assert!(garbled.contains(CERT_KEY), "{garbled}");
        assert!(certified_key(&Secret::default()).unwrap_err().contains("has no tls.crt"));
    }

    #[test]
    fn hosts_get_their_secrets_certificate_and_wildcards_cover_one_label() {
        let (a_crt, a_key) = pem_pair("a.example.test");
        let (w_crt, w_key) = pem_pair("*.apps.example.test");
        let secrets: HashMap<String, Arc<Secret>> =
            [("demo/a".to_string(), secret("1", &a_crt, &a_key)), ("demo/w".to_string(), secret("1", &w_crt, &w_key))]
                .into();
        let lookup = |k: &str| secrets.get(k).cloned();
        let ing = ingress(json!([
            {"hosts": ["a.example.test"], "secretName": "a"},
            {"hosts": ["*.apps.example.test"], "secretName": "w"},
            {"hosts": ["gone.example.test"], "secretName": "missing"},
        ]));
        let certs = Certs::build(&[ing], &lookup, &Certs::default(), &mut ParsedSecrets::default());
        assert_eq!(certs.len(), 2);
        let a = certs.find("A.example.test").unwrap();
        let w = certs.find("shop.apps.example.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &w));
        assert!(certs.find("x.shop.apps.example.test").is_none());
        assert!(certs.find("gone.example.test").is_none());
    }

    #[test]
    fn secrets_no_ingress_names_any_more_are_forgotten() {
        let (crt, key) = pem_pair("a.example.test");
        let good = secret("1", &crt, &key);
        let mut parsed = ParsedSecrets::default();
        let ing = ingress(json!([{"hosts": ["a.example.test"], "secretName": "a"}]));
        Certs::build(&[ing], &|_| Some(good.clone()), &Certs::default(), &mut parsed);
        assert_eq!(parsed.parsed.len(), 1);
        Certs::build(&[ingress(json!([]))], &|_| Some(good.clone()), &Certs::default(), &mut parsed);
        assert!(parsed.parsed.is_empty());
    }

    #[test]
    fn a_host_keeps_its_certificate_when_its_secret_turns_invalid() {
        let (crt, key) = pem_pair("a.example.test");
        let ing = ingress(json!([{"hosts": ["a.example.test"], "secretName": "a"}]));
        let mut parsed = ParsedSecrets::default();
        let good = secret("1", &crt, &key);
        let before = Certs::build(std::slice::from_ref(&ing), &|_| Some(good.clone()), &Certs::default(), &mut parsed);
        let bad = secret("2", "not a certificate", &key);
        let after = Certs::build(std::slice::from_ref(&ing), &|_| Some(bad.clone()), &before, &mut parsed);
        assert!(Arc::ptr_eq(&before.find("a.example.test").unwrap(), &after.find("a.example.test").unwrap()));
        let problems = secret_problems(&ing, &|_| Some(bad.clone()));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("secret demo/a tls.crt"), "{problems:?}");
    }
}
