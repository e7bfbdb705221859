//! The cluster's certificate authority. `skiffctl up` and the test harness
//! make one per cluster; every connection to the apiserver is TLS with its
//! server certificate, and clients prove who they are with certificates it
//! signed: the subject's CN is the user, its O entries the groups, as in
//! Kubernetes.
#![forbid(unsafe_code)]

pub mod csr;
pub mod keys;
pub mod serve;

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("{0:?} is neither a DNS name nor an IP address")]
    BadName(String),
    #[error("a certificate made here names at most one group (O), not {0}")]
    TooManyGroups(usize),
    #[error("private key: {0}")]
    Key(String),
}

/// How long a CA is trusted, as kubeadm's.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server or client certificate is valid, as kubeadm's.
pub const LEAF_VALIDITY: Duration = Duration::days(365);

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new private key (PEM, PKCS#8 ECDSA P-256) for signing: what the
/// apiserver signs ServiceAccount tokens with.
pub fn signing_key_pem() -> Result<String, Error> {
    Ok(KeyPair::generate()?.serialize_pem())
}

/// Who a client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user: String,
    pub groups: Vec<String>,
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub enum Usage<'a> {
    /// A TLS server reached by these DNS names and IP addresses.
    Server { names: &'a [String] },
    /// A member of a cluster of servers that also dial each other (etcd's
    /// peers): a server certificate good for client authentication too, as
    /// kubeadm's etcd certificates are.
    Peer { names: &'a [String] },
    /// A client authenticating as `user` in `groups`.
    Client { user: &'a str, groups: &'a [&'a str] },
}

/// A certificate authority: its certificate and the key that signs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = validity_window(CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA stored as PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::try_from(keys::pkcs8_der(key_pem)?.as_slice())?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self { issuer, cert_pem: cert_pem.to_string() })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A fresh key and a certificate for it, signed by this CA and valid
    /// for `validity` from now.
    pub fn issue(&self, usage: &Usage, validity: Duration) -> Result<Issued, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        match usage {
            Usage::Server { names } | Usage::Peer { names } => {
                let first = names.first().map(String::as_str).unwrap_or("skiff");
                params.distinguished_name.push(DnType::CommonName, first);
                params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                if matches!(usage, Usage::Peer { .. }) {
                    params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
                }
            }
            Usage::Client { user, groups } => {
                // rcgen keeps one value per attribute type; certificates
                // from elsewhere (a CSR made with openssl) may carry more,
                // and `subject` reads them all.
                if groups.len() > 1 {
                    return Err(Error::TooManyGroups(groups.len()));
                }
                params.distinguished_name.push(DnType::CommonName, *user);
                for g in *groups {
                    params.distinguished_name.push(DnType::OrganizationName, *g);
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        (params.not_before, params.not_after) = validity_window(validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// From a minute ago (clocks of hosts differ a little) until `length` from now.
fn validity_window(length: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::minutes(1), now + length)
}

fn san(name: &str) -> Result<SanType, Error> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
    if !valid {
        return Err(Error::BadName(name.to_string()));
    }
    let dns = name.to_string().try_into().map_err(|_| Error::BadName(name.to_string()))?;
    Ok(SanType::DnsName(dns))
}

/// The user (CN) and groups (O) a DER client certificate names.
pub fn subject(der: &[u8]) -> Result<Subject, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Parse(e.to_string()))?;
    let name = cert.subject();
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue| attr.as_str().ok().map(str::to_string);
    let user = name.iter_common_name().next().and_then(text).unwrap_or_default();
    let groups = name.iter_organization().filter_map(text).collect();
    Ok(Subject { user, groups })
}

/// When a DER certificate stops being valid, in seconds since the epoch.
pub fn not_after(der: &[u8]) -> Result<i64, Error> {
    Ok(validity(der)?.1)
}

/// When a DER certificate starts and stops being valid, in seconds since
/// the epoch.
pub fn validity(der: &[u8]) -> Result<(i64, i64), Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::Parse(e.to_string()))?;
    Ok((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// A PEM certificate chain (leaf first) and its PEM private key, ready to
/// serve, after checking that the key is the leaf's.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key is not a PEM private key: {e}"))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("the key is not supported: {e}"))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(Arc::new(certified))
}

/// The DER bodies of the certificates in a PEM text, in order.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| Error::Parse(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_names_user_and_groups() {
        let ca = Ca::generate("skiff-ca").unwrap();
        let issued = ca.issue(&Usage::Client { user: "alice", groups: &["dev"] }, LEAF_VALIDITY).unwrap();
        let der = pem_certificates(&issued.cert_pem).unwrap();
        assert_eq!(der.len(), 1);
        let s = subject(&der[0]).unwrap();
        assert_eq!(s, Subject { user: "alice".into(), groups: vec!["dev".into()] });
        let two = ca.issue(&Usage::Client { user: "alice", groups: &["dev", "ops"] }, LEAF_VALIDITY);
        assert!(matches!(two, Err(Error::TooManyGroups(2))));
    }

    #[test]
    fn a_stored_ca_signs_as_the_original() {
        let ca = Ca::generate("skiff-ca").unwrap();
        let again = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let issued = again.issue(&Usage::Server { names: &names }, Duration::hours(1)).unwrap();
        let der = &pem_certificates(&issued.cert_pem).unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let ca_der = &pem_certificates(ca.cert_pem()).unwrap()[0];
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA's key");
        let left = not_after(der).unwrap() - OffsetDateTime::now_utc().unix_timestamp();
        assert!((3500..=3600).contains(&left), "valid for about an hour, {left} s left");
    }

    #[test]
    fn an_issued_pair_serves_and_a_foreign_key_is_refused() {
        let ca = Ca::generate("skiff-ca").unwrap();
        let names = vec!["localhost".to_string()];
        let a = ca.issue(&Usage::Server { names: &names }, LEAF_VALIDITY).unwrap();
        let b = ca.issue(&Usage::Server { names: &names }, LEAF_VALIDITY).unwrap();
        certified_key(a.cert_pem.as_bytes(), a.key_pem.as_bytes()).expect("a matching pair");
        let err = certified_key(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).err().unwrap();
        assert!(err.contains("does not match"), "{err}");
        assert!(certified_key(b"junk", a.key_pem.as_bytes()).is_err());
    }

    #[test]
    fn a_peer_certificate_serves_and_authenticates_a_server_only_serves() {
        let ca = Ca::generate("skiff-ca").unwrap();
        let names = vec!["etcd-1".to_string()];
        let usages = |usage: &Usage| {
            let issued = ca.issue(usage, LEAF_VALIDITY).unwrap();
            let der = pem_certificates(&issued.cert_pem).unwrap().remove(0);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let eku = cert.extended_key_usage().unwrap().expect("extended key usage").value.clone();
            (eku.server_auth, eku.client_auth)
        };
        assert_eq!(usages(&Usage::Peer { names: &names }), (true, true));
        assert_eq!(usages(&Usage::Server { names: &names }), (true, false));
    }

    #[test]
    fn names_that_are_neither_dns_nor_ip_are_refused() {
        let ca = Ca::generate("skiff-ca").unwrap();
        let names = vec!["bad name!".to_string()];
        assert!(matches!(ca.issue(&Usage::Server { names: &names }, LEAF_VALIDITY), Err(Error::BadName(_))));
    }
}
