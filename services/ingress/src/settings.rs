//! Per-Ingress proxy settings, read from `skiff.io/*` annotations as
//! ingress-nginx reads its own. A value that does not parse keeps the
//! default and is reported (the reconciler turns it into a Warning Event),
//! so one typo never takes a route down.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff_api::parse_duration;

pub const LOAD_BALANCE: &str = "skiff.io/load-balance";
pub const UPSTREAM_HASH_BY: &str = "skiff.io/upstream-hash-by";
pub const CONNECT_TIMEOUT: &str = "skiff.io/proxy-connect-timeout";
pub const READ_TIMEOUT: &str = "skiff.io/proxy-read-timeout";
pub const BODY_SIZE: &str = "skiff.io/proxy-body-size";
pub const SSL_REDIRECT: &str = "skiff.io/ssl-redirect";
pub const BACKEND_PROTOCOL: &str = "skiff.io/backend-protocol";
pub const MAX_FAILS: &str = "skiff.io/max-fails";
pub const FAIL_TIMEOUT: &str = "skiff.io/fail-timeout";

/// How a backend's endpoint is picked for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    /// The same key goes to the same endpoint while it stays up.
    Hash(HashKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// HTTP/2 without TLS to the endpoint (h2c), as gRPC servers speak it.
    Grpc,
}

/// What an Ingress's annotations set, with ingress-nginx's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Largest request body accepted; `None` when unlimited (`0`).
    pub max_body: Option<u64>,
    /// `None`: redirect when the host has TLS (the default).
    pub ssl_redirect: Option<bool>,
    pub protocol: Protocol,
    /// Connect failures within `fail_timeout` that take an endpoint out
    /// of rotation for `fail_timeout` (nginx's max_fails / fail_timeout).
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            max_body: Some(1024 * 1024),
            ssl_redirect: None,
            protocol: Protocol::Http,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

impl Settings {
    /// Reads the annotations; returns the settings and one message per
    /// annotation that was ignored, naming it and why.
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> (Self, Vec<String>) {
        let mut settings = Self::default();
        let mut problems = Vec::new();
        let Some(annotations) = annotations else { return (settings, problems) };
        let mut read = |key: &str, apply: &mut dyn FnMut(&str) -> Result<(), String>| {
            if let Some(value) = annotations.get(key) {
                if let Err(why) = apply(value.trim()) {
                    problems.push(format!("annotation {key}: {why}; using the default"));
                }
            }
        };
        read(LOAD_BALANCE, &mut |v| {
            settings.balance = match v {
                "round-robin" | "round_robin" => Balance::RoundRobin,
                "least-conn" | "least_conn" => Balance::LeastConn,
                other => return Err(format!("{other:?} is not one of round-robin, least-conn")),
            };
            Ok(())
        });
        read(UPSTREAM_HASH_BY, &mut |v| {
            settings.balance = Balance::Hash(parse_hash_key(v)?);
            Ok(())
        });
        read(CONNECT_TIMEOUT, &mut |v| positive_duration(v).map(|d| settings.connect_timeout = d));
        read(READ_TIMEOUT, &mut |v| positive_duration(v).map(|d| settings.read_timeout = d));
        read(BODY_SIZE, &mut |v| parse_size(v).map(|n| settings.max_body = (n > 0).then_some(n)));
        read(SSL_REDIRECT, &mut |v| parse_bool(v).map(|b| settings.ssl_redirect = Some(b)));
        read(BACKEND_PROTOCOL, &mut |v| {
            settings.protocol = match v.to_ascii_uppercase().as_str() {
                "HTTP" => Protocol::Http,
                "GRPC" | "H2C" => Protocol::Grpc,
                _ => return Err(format!("{v:?} is not one of HTTP, GRPC")),
            };
            Ok(())
        });
        read(MAX_FAILS, &mut |v| {
            v.parse().map(|n| settings.max_fails = n).map_err(|_| format!("{v:?} is not a count"))
        });
        read(FAIL_TIMEOUT, &mut |v| positive_duration(v).map(|d| settings.fail_timeout = d));
        (settings, problems)
    }
}

/// `header:NAME`, `cookie:NAME` or `source-ip`.
fn parse_hash_key(v: &str) -> Result<HashKey, String> {
    if v == "source-ip" || v == "$remote_addr" {
        return Ok(HashKey::SourceIp);
    }
    if let Some(name) = v.strip_prefix("header:") {
        return http::HeaderName::try_from(name.trim())
            .map(HashKey::Header)
            .map_err(|_| format!("{name:?} is not a header name"));
    }
    if let Some(name) = v.strip_prefix("cookie:").map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(HashKey::Cookie(name.to_string()));
    }
    Err(format!("{v:?} is not one of header:NAME, cookie:NAME, source-ip"))
}

/// A duration (`5s`, `1m`), or plain seconds as ingress-nginx takes them.
fn positive_duration(v: &str) -> Result<Duration, String> {
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => parse_duration(v)?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// nginx's size syntax: bytes, or with a `k`/`m`/`g` suffix.
fn parse_size(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix(['k', 'm', 'g']) {
        Some(d) => (d, lower.chars().last().unwrap_or('b')),
        None => (lower.as_str(), 'b'),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{v:?} is not a size like 8m, 512k or 1048576"))?;
    let scale: u64 = match unit {
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => 1,
    };
    n.checked_mul(scale).ok_or_else(|| format!("{v:?} is too large"))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (Settings, Vec<String>) {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_annotations(Some(&map))
    }

    #[test]
    fn annotations_set_what_they_name() {
        let (s, problems) = read(&[
            (LOAD_BALANCE, "least-conn"),
            (CONNECT_TIMEOUT, "2"),
            (READ_TIMEOUT, "90s"),
            (BODY_SIZE, "8m"),
            (SSL_REDIRECT, "false"),
            (BACKEND_PROTOCOL, "GRPC"),
            (MAX_FAILS, "3"),
            (FAIL_TIMEOUT, "30s"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.balance, Balance::LeastConn);
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.read_timeout, Duration::from_secs(90));
        assert_eq!(s.max_body, Some(8 << 20));
        assert_eq!(s.ssl_redirect, Some(false));
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!((s.max_fails, s.fail_timeout), (3, Duration::from_secs(30)));
    }

    #[test]
    fn hash_keys_parse() {
        assert_eq!(read(&[(UPSTREAM_HASH_BY, "source-ip")]).0.balance, Balance::Hash(HashKey::SourceIp));
        assert_eq!(
            read(&[(UPSTREAM_HASH_BY, "cookie:session")]).0.balance,
            Balance::Hash(HashKey::Cookie("session".into()))
        );
        assert_eq!(
            read(&[(UPSTREAM_HASH_BY, "header:X-User")]).0.balance,
            Balance::Hash(HashKey::Header(http::HeaderName::from_static("x-user")))
        );
    }

    #[test]
    fn a_bad_value_keeps_the_default_and_names_the_annotation() {
        let (s, problems) =
            read(&[(BODY_SIZE, "lots"), (CONNECT_TIMEOUT, "0"), (LOAD_BALANCE, "random"), (UPSTREAM_HASH_BY, "x")]);
        assert_eq!(s, Settings::default());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains(BODY_SIZE) && p.contains("\"lots\"")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains(CONNECT_TIMEOUT)), "{problems:?}");
    }

    #[test]
    fn zero_body_size_means_unlimited() {
        assert_eq!(read(&[(BODY_SIZE, "0")]).0.max_body, None);
    }
}
