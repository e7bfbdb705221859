//! Private keys in the PEM forms operators bring: PKCS#8 (`PRIVATE KEY`),
//! and the older PKCS#1 (`RSA PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`)
//! that `openssl genrsa`/`ecparam` and Helm's `genCA`/`genPrivateKey` write.
//! ring signs only with PKCS#8 keys, so the older forms are re-wrapped in
//! it here: the key itself is untouched.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivateKeyDer;

use crate::Error;

const RSA_ENCRYPTION: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const NULL: &[u8] = &[0x05, 0x00];
const VERSION_0: &[u8] = &[0x02, 0x01, 0x00];

const SEQUENCE: u8 = 0x30;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
/// SEC1's `[0] parameters`: the curve.
const CONTEXT_0: u8 = 0xa0;

/// The first private key in `pem`, as PKCS#8 DER.
pub fn pkcs8_der(pem: &str) -> Result<Vec<u8>, Error> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Key(format!("no private key in PEM form: {e}")))?;
    match key {
        PrivateKeyDer::Pkcs8(der) => Ok(der.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(der) => Ok(pkcs8(&[RSA_ENCRYPTION, NULL].concat(), der.secret_pkcs1_der())),
        PrivateKeyDer::Sec1(der) => sec1_to_pkcs8(der.secret_sec1_der()),
        _ => Err(Error::Key("an unknown kind of private key".into())),
    }
}

/// SEC1 `ECPrivateKey ::= SEQUENCE { version, privateKey, [0] parameters,
/// [1] publicKey }` as PKCS#8: the curve moves to the algorithm identifier
/// and is dropped from the inner key, which PKCS#8 allows and ring expects.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, Error> {
    let malformed = || Error::Key("a malformed EC PRIVATE KEY".into());
    let (tag, body, _) = tlv(sec1).ok_or_else(malformed)?;
    if tag != SEQUENCE {
        return Err(malformed());
    }
    let mut curve = None;
    let mut inner = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (tag, value, next) = tlv(rest).ok_or_else(malformed)?;
        let whole = &rest[..rest.len() - next.len()];
        match tag {
            CONTEXT_0 => match tlv(value) {
                Some((OID, _, [])) => curve = Some(value),
                _ => return Err(malformed()),
            },
            _ => inner.extend_from_slice(whole),
        }
        rest = next;
    }
    let curve = curve.ok_or_else(|| Error::Key("an EC PRIVATE KEY that does not name its curve".into()))?;
    Ok(pkcs8(&[EC_PUBLIC_KEY, curve].concat(), &encode(SEQUENCE, &inner)))
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, OCTET STRING key }`.
fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let body = [VERSION_0, &encode(SEQUENCE, algorithm), &encode(OCTET_STRING, key)].concat();
    encode(SEQUENCE, &body)
}

/// One DER element: (tag, value, what follows it). Definite lengths up to
/// four bytes; anything else is None.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn encode(tag: u8, value: &[u8]) -> Vec<u8> {
    let len = value.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl ecparam -name prime256v1 -genkey -noout` (SEC1,
    // with its curve and public key, as Helm's genPrivateKey "ecdsa" writes).
    const SEC1_P256: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIDIqgwz4ZcTI2FDNIzzFMABFrn5byhDu6OkyzciUk1f7oAoGCCqGSM49
AwEHoUQDQgAEKlvHOzjudvCboPRm49Cj1BhAmTEW/QQTiSP0mF604ugAvEXQUKex
ZYDo5SYBLYz3uCZ8/Hsp6ouskH37r730hA==
-----END EC PRIVATE KEY-----
";

    #[test]
    fn sec1_keys_become_pkcs8_that_sign() {
        let der = pkcs8_der(SEC1_P256).unwrap();
        let key = rcgen::KeyPair::try_from(der.as_slice()).expect("ring takes the re-wrapped key");
        assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    }

    // `openssl genrsa -traditional 2048`, as Helm's genCA writes its key.
    const PKCS1_RSA: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEoAIBAAKCAQEAy6FUViJ5iYuhDtUQA0N2jfAlvAsz6g/s3HwD+AudXktawtzX
M3FTderzmq6THguPMCOQ/8l8uHQibyv4klDcQad3I+vMR9QwR/J8QMbjLr8F8yr5
IBr2n/Zj+lL5oaHymeiP7mviQW+tT5IM+m9o1mGcBNkdwagYABchAJpCtSNP6PaE
paRkyP4n0rkQm8N2t0Yq/vOmfvirT2IO4l74YBIMBJUFnXyTH9n5a91HTIgkFVA7
dT9VX0kFcE0aw4sbo5bgnTtAAvjFoYbag6KFWLBLT13jr2430pTv3hK23n6TTbnb
G+z2usEbAIdTfc5GImNvQFgTxhhFyucQTIaEBwIDAQABAoH/HdQEBpoGM5/Ad+u9
7Lx1IVWMMX9ym1a525JPAoaxBp8DLIgs/dwb3aoNBRuNcVlAIE0VcGKTYnGgmahX
QReXLAbb7OcdhWgPqnpauSJpJO/Wb0hcNde9SLFO89wztPmEEAeBDeu/uNYjDQTX
4ddwA/dIY21qbnOxEFJTA0OVgfLnWwyqgOj7+aAibFRngn1HV+CcUuK/SZaHtr9R
t8bPajQqJyrf3+7yLb9pNmoiF63YdAB0kY15lN7kPWjzb4ZRr0Wr9qO54xnfoihg
NUk1vwxZCJxDy27VbSqzC30jgew7dLXrE2fkgChWLkW20urAELmYEIW8meTHLXwe
cROxAoGBAOh5cV/zO4+L/IIyVU8B34SHUjNNvAHQICByY2EnY+aSRJPQfdGVu56y
ws1qcoeeGqDx84KgdrnmICaxmZJiZBhSzuNpoLUwJUbCOKNUOTnzmblUn3gfRCyM
8qIiJxicOCz9UazHvUWzPWybvsfKPX6C3AvFZChb495LI8K26UwxAoGBAOA8o7cb
tAJlN4MpKug+dMAhO/ZRqzZGKEtczqqN9A0VYx0FcyzqWF15a+SYy2APSGOD+lww
4534gczsbfao/7o02gk/IcgU2/S89WfjNqdVrB1eBBANG4Oy23ipkZ5IrpOD/zoG
4WaTHmRnc+4IAOngjSCmiAy0aG3WtwnRt523AoGASt4hhxccTWR107BGDQW7aED0
VhVowOS4E/sCyl0XLUBZ2YjBnGeuXrOPTPxFGivuw3poQ99NnRzhqdR0ctJBDhxN
CKwR14hD2P/foaoUK/epwCfim5rmJ7rUwSZilOhqpwKF9TD2YaYR2BJoZItbNo0K
NLhDQ0QkpIhqYeDqTWECgYBix5O/J/8GRxxLNSlnoYvAz2MgwR1RDVrWyA1qaJon
4VIGCM6R7LH8i26SBxUgPds/q3XwgsDiaASWB1jxncT5fCrIg/0XrMiwaUUZ/Keo
0z68uRvFDmEehP3Vi61QMuhkp3MZVsqYaxqqVEBnjTMJ1BeXWIT6Q8b1C+8Z7j6a
xQKBgE0BAKat9l7Q9AsFJ4pG/ZD1+2Bu9GTTu8wQ2LehPQQPQnGJOttwukWH6HoM
wdpZTMdp6zUmw4nRIlHju/i3XQmkqaGFHxQ7xj7u5NQ9OMlKDMezhxcJ8LNnupO3
N8dDyiP8Fi7LTwa4yYSejRQVXLAZGEM2QmZPqI/ov3NsDTV6
-----END RSA PRIVATE KEY-----
";

    #[test]
    fn pkcs1_keys_become_pkcs8_that_sign() {
        let der = pkcs8_der(PKCS1_RSA).unwrap();
        let key = rcgen::KeyPair::try_from(der.as_slice()).expect("ring takes the re-wrapped key");
        assert!(key.is_compatible(&rcgen::PKCS_RSA_SHA256));
    }

    #[test]
    fn pkcs8_keys_pass_through() {
        let key = rcgen::KeyPair::generate().unwrap();
        assert_eq!(pkcs8_der(&key.serialize_pem()).unwrap(), key.serialize_der());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(pkcs8_der("not a key").is_err());
        let truncated = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIDbr\n-----END EC PRIVATE KEY-----\n";
        assert!(pkcs8_der(truncated).is_err());
        assert!(sec1_to_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err(), "no curve");
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }

    #[test]
    fn lengths_encode_short_and_long() {
        assert_eq!(encode(OCTET_STRING, &[7; 3])[..2], [0x04, 3]);
        let long = encode(OCTET_STRING, &[7; 300]);
        assert_eq!(long[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv(&long).map(|(t, v, r)| (t, v.len(), r.len())), Some((OCTET_STRING, 300, 0)));
    }
}
