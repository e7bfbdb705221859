//! The few protobuf bodies clients send: kubectl's typed clients post
//! SelfSubjectAccessReviews (`auth can-i`), Evictions (`drain`) and
//! TokenRequests (`create token`) as `application/vnd.kubernetes.protobuf`
//! whatever the server prefers. Those are decoded here into the JSON the
//! handlers read (answers go back as JSON, which the clients accept); any
//! other protobuf body is refused as an unsupported media type.
//!
//! The wire format: the magic `k8s\0`, then a `runtime.Unknown` whose
//! field 2 holds the object's own protobuf encoding.

use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How one field of a message reads.
enum Field {
    Text,
    Int,
    Texts,
    Message(&'static [(u32, &'static str, Field)]),
}

use Field::{Int, Message, Text, Texts};

const RESOURCE_ATTRIBUTES: &[(u32, &str, Field)] = &[
    (1, "namespace", Text),
    (2, "verb", Text),
    (3, "group", Text),
    (4, "version", Text),
    (5, "resource", Text),
    (6, "subresource", Text),
    (7, "name", Text),
];
const OBJECT_META: &[(u32, &str, Field)] = &[(1, "name", Text), (3, "namespace", Text), (5, "uid", Text)];
const ACCESS_REVIEW: &[(u32, &str, Field)] = &[
    (1, "metadata", Message(OBJECT_META)),
    (
        2,
        "spec",
        Message(&[(1, "resourceAttributes", Message(RESOURCE_ATTRIBUTES)), (3, "user", Text), (4, "groups", Texts)]),
    ),
];
const EVICTION: &[(u32, &str, Field)] = &[
    (1, "metadata", Message(OBJECT_META)),
    (
        2,
        "deleteOptions",
        Message(&[
            (1, "gracePeriodSeconds", Int),
            (2, "preconditions", Message(&[(1, "uid", Text), (2, "resourceVersion", Text)])),
            (4, "propagationPolicy", Text),
        ]),
    ),
];
const TOKEN_REQUEST: &[(u32, &str, Field)] = &[
    (1, "metadata", Message(OBJECT_META)),
    (
        2,
        "spec",
        Message(&[
            (1, "audiences", Texts),
            (4, "expirationSeconds", Int),
            (
                3,
                "boundObjectRef",
                Message(&[(1, "kind", Text), (2, "apiVersion", Text), (3, "name", Text), (4, "uid", Text)]),
            ),
        ]),
    ),
];

/// Which message a protobuf body of `kind` is.
fn schema(kind: &str) -> Option<&'static [(u32, &'static str, Field)]> {
    match kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => Some(ACCESS_REVIEW),
        "Eviction" => Some(EVICTION),
        "TokenRequest" => Some(TOKEN_REQUEST),
        _ => None,
    }
}

/// The body, decoded as `kind` (the kind the path's handler takes).
pub fn decode(body: &[u8], kind: &str) -> Result<Value, String> {
    let schema = schema(kind).ok_or_else(|| format!("{kind} is not accepted as protobuf; send JSON"))?;
    let unknown = body.strip_prefix(b"k8s\0").ok_or("the body lacks the k8s protobuf magic")?;
    let raw = fields(unknown)?
        .into_iter()
        .find_map(|(number, value)| match (number, value) {
            (2, Wire::Bytes(raw)) => Some(raw),
            _ => None,
        })
        .ok_or("the body's envelope holds no object")?;
    message(raw, schema)
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("a truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 64 bits".into())
}

/// The fields of one message, in order; fixed-width ones are skipped.
fn fields(bytes: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number out of range")?;
        match key & 7 {
            0 => out.push((number, Wire::Varint(varint(bytes, &mut at)?))),
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).map_err(|_| "a length out of range")?;
                let end = at.checked_add(len).filter(|end| *end <= bytes.len()).ok_or("a truncated field")?;
                out.push((number, Wire::Bytes(&bytes[at..end])));
                at = end;
            }
            1 => at += 8,
            5 => at += 4,
            other => return Err(format!("wire type {other} is not supported")),
        }
    }
    Ok(out)
}

fn message(bytes: &[u8], schema: &[(u32, &str, Field)]) -> Result<Value, String> {
    let mut out = Map::new();
    for (number, wire) in fields(bytes)? {
        let Some((_, name, field)) = schema.iter().find(|(n, _, _)| *n == number) else { continue };
        let value = match (field, wire) {
            (Text, Wire::Bytes(b)) => Value::from(String::from_utf8_lossy(b).into_owned()),
            // int64 fields are two's complement varints.
            (Int, Wire::Varint(v)) => Value::from(v as i64),
            (Message(inner), Wire::Bytes(b)) => message(b, inner)?,
            (Texts, Wire::Bytes(b)) => {
                let list = out.entry(name.to_string()).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = list {
                    items.push(String::from_utf8_lossy(b).into_owned().into());
                }
                continue;
            }
            _ => return Err(format!("field {name} has the wrong wire type")),
        };
        out.insert(name.to_string(), value);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]
        #[test]
        fn any_body_is_decoded_or_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            for kind in ["SelfSubjectAccessReview", "Eviction", "TokenRequest"] {
                let _ = decode(&body, kind);
                let _ = decode(&[b"k8s\0".as_slice(), &body].concat(), kind);
            }
        }
    }

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_self_subject_access_review_decodes() {
        let attributes =
            [field(1, b"default"), field(2, b"create"), field(3, b"apps"), field(5, b"deployments")].concat();
        let review = field(2, &field(1, &attributes));
        let envelope = [b"k8s\0".to_vec(), field(1, &field(2, b"SelfSubjectAccessReview")), field(2, &review)].concat();
        let value = decode(&envelope, "SelfSubjectAccessReview").unwrap();
        let attributes = &value["spec"]["resourceAttributes"];
        assert_eq!(attributes["verb"], "create");
        assert_eq!(attributes["resource"], "deployments");
        assert_eq!(attributes["namespace"], "default");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in
            [&b"k8s\0\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"[..], b"nope", b"k8s\0\x12\x05ab", b"k8s\0\x0f"]
        {
            assert!(decode(body, "Eviction").is_err(), "{body:?}");
        }
        assert!(decode(b"k8s\0", "Deployment").is_err());
    }
}
