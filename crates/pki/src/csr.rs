//! Certificate signing requests: how a joining node gets its certificates
//! without its private key ever leaving it. The node makes a key and a CSR
//! ([`request`]); the apiserver checks the CSR ([`parse`]); the signer,
//! once the request is approved, issues the certificate ([`Ca::sign`]) with
//! the usages of its signer, not whatever the CSR asked for.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::Duration;

use crate::{san, validity_window, Ca, Error, Issued, Subject};

/// What a CSR asks for: its subject and its DNS and IP names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub subject: Subject,
    pub names: Vec<String>,
}

/// A fresh key and a PEM CSR for `user` in `groups` (CN and O), valid for
/// the DNS names and IP addresses `names` (none for a client): `key_pem` is
/// the key, `cert_pem` the request.
pub fn request(user: &str, groups: &[&str], names: &[String]) -> Result<Issued, Error> {
    if groups.len() > 1 {
        return Err(Error::TooManyGroups(groups.len()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    for g in groups {
        params.distinguished_name.push(DnType::OrganizationName, *g);
    }
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    let csr = params.serialize_request(&key)?;
    Ok(Issued { cert_pem: csr.pem()?, key_pem: key.serialize_pem() })
}

/// The subject and names of a PEM CSR, once its signature proves it was
/// made with the key it carries.
pub fn parse(csr_pem: &str) -> Result<Requested, Error> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| Error::Parse(format!("CSR: {e}")))?;
    Ok(Requested { subject: subject(csr_pem)?, names: names(&csr.params) })
}

/// The CSR's subject, every O of it: rcgen keeps one value per attribute
/// type, so a request naming several groups is read with x509-parser.
fn subject(csr_pem: &str) -> Result<Subject, Error> {
    let bad = |e: String| Error::Parse(format!("CSR: {e}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| bad(e.to_string()))?;
    let name = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().map(str::to_string).unwrap_or_default();
    let user = name.iter_common_name().next().map(text).unwrap_or_default();
    let groups = name.iter_organization().map(text).collect();
    Ok(Subject { user, groups })
}

fn names(params: &CertificateParams) -> Vec<String> {
    params
        .subject_alt_names
        .iter()
        .filter_map(|n| match n {
            SanType::DnsName(dns) => Some(dns.to_string()),
            SanType::IpAddress(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect()
}

/// What the signed certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    Client,
    Server,
}

impl Ca {
    /// A certificate for the key and subject of the PEM CSR `csr_pem`,
    /// valid for `validity` from now, for `usage` only: the CSR's own
    /// extensions are not copied.
    pub fn sign(&self, csr_pem: &str, usage: Signed, validity: Duration) -> Result<String, Error> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| Error::Parse(format!("CSR: {e}")))?;
        // rcgen writes one O: refused, rather than signed with a group lost.
        let groups = subject(csr_pem)?.groups.len();
        if groups > 1 {
            return Err(Error::TooManyGroups(groups));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = csr.params.distinguished_name.clone();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        match usage {
            Signed::Client => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
            Signed::Server => {
                params.subject_alt_names = csr.params.subject_alt_names.clone();
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
        }
        (params.not_before, params.not_after) = validity_window(validity);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LEAF_VALIDITY;

    #[test]
    fn a_client_request_is_signed_with_its_subject_for_client_auth_only() {
        let ca = Ca::generate("test-ca").unwrap();
        let made = request("system:node:n1", &["system:nodes"], &[]).unwrap();
        let asked = parse(&made.cert_pem).unwrap();
        assert_eq!(asked.subject, Subject { user: "system:node:n1".into(), groups: vec!["system:nodes".into()] });
        let cert = ca.sign(&made.cert_pem, Signed::Client, LEAF_VALIDITY).unwrap();
        let der = crate::pem_certificates(&cert).unwrap().remove(0);
        assert_eq!(crate::subject(&der).unwrap(), asked.subject);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        // The certificate is for the requester's key: it pairs with it.
        assert!(crate::certified_key(cert.as_bytes(), made.key_pem.as_bytes()).is_ok());
    }

    #[test]
    fn a_server_request_keeps_its_names() {
        let ca = Ca::generate("test-ca").unwrap();
        let names = ["172.29.87.21".to_string(), "node-1".to_string()];
        let made = request("system:node:node-1", &["system:nodes"], &names).unwrap();
        let asked = parse(&made.cert_pem).unwrap();
        assert_eq!(asked.names, names.to_vec());
        assert_eq!(asked.subject.user, "system:node:node-1");
        let cert = ca.sign(&made.cert_pem, Signed::Server, LEAF_VALIDITY).unwrap();
        let der = crate::pem_certificates(&cert).unwrap().remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(parsed.extended_key_usage().unwrap().unwrap().value.server_auth);
    }

    #[test]
    fn garbage_and_tampered_requests_are_refused() {
        assert!(parse("not a csr").is_err());
        let made = request("a", &[], &[]).unwrap();
        // One base64 character of the body changed, deep inside the subject.
        let mut lines: Vec<String> = made.cert_pem.lines().map(str::to_string).collect();
        let flipped = if lines[1].as_bytes()[20] == b'A' { "B" } else { "A" };
        lines[1].replace_range(20..21, flipped);
        let tampered = lines.join("\n");
        assert!(parse(&tampered).is_err(), "a request whose bytes changed no longer verifies");
    }

    /// A request from elsewhere (openssl, say) may name several groups.
    /// They are all read; the signer, which can write only one O, refuses it
    /// rather than sign a certificate that lost a group.
    #[test]
    fn a_request_naming_two_groups_is_read_whole_and_not_signed_short_of_one() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.distinguished_name.push(DnType::OrganizationName, "dev");
        // The O attribute's own OID, under another key of rcgen's map.
        params.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 10]), "ops");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        assert_eq!(parse(&pem).unwrap().subject.groups, ["dev", "ops"]);
        let ca = Ca::generate("test-ca").unwrap();
        assert!(matches!(ca.sign(&pem, Signed::Client, LEAF_VALIDITY), Err(Error::TooManyGroups(2))));
    }
}
