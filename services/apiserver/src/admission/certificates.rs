//! CertificateSigningRequests as they are created: `spec.request` must be
//! a PEM CSR whose signature verifies, and `spec.username`, `uid` and
//! `groups` are set from the caller, whatever the body said, since they
//! are what an approver decides on. A node-client request must also ask
//! for the name its requester may have: a node renewing asks for itself, a
//! bootstrap token for any one node.

use base64::Engine;
use serde_json::{json, Value};
use skiff_api::well_known::{node_name, BOOTSTRAPPERS_GROUP, KUBELET_CLIENT_SIGNER, NODES_GROUP, NODE_USER_PREFIX};

use crate::auth::UserInfo;
use crate::Error;

const KIND: &str = "CertificateSigningRequest";

/// The object to store for `user`'s create of `object`; other kinds pass as they are.
pub fn admit_create(user: &UserInfo, kind: &str, object: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    if kind != KIND {
        return Ok(None);
    }
    let mut value: Value =
        serde_json::from_slice(object).map_err(|source| Error::BadJson { what: "the object", source })?;
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let invalid = |path: &str, message: String| Error::Invalid {
        kind: KIND,
        name: name.clone(),
        source: skiff_api::Error::field(path, message),
    };
    let encoded = value["spec"]["request"].as_str().unwrap_or_default();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| invalid("spec.request", "must be a base64-encoded PEM certificate signing request".into()))?;
    let requested = skiff_pki::csr::parse(&pem).map_err(|e| invalid("spec.request", e.to_string()))?;
    if value["spec"]["signerName"] == KUBELET_CLIENT_SIGNER {
        node_client_request(user, &requested.subject).map_err(|why| invalid("spec.request", why))?;
    }
    if !value["spec"].is_object() {
        value["spec"] = json!({});
    }
    value["spec"]["username"] = user.name.clone().into();
    value["spec"]["uid"] = user.uid.clone().into();
    value["spec"]["groups"] = user.groups.clone().into();
    Ok(Some(value.to_string().into_bytes()))
}

/// A kubelet client certificate names one node in `system:nodes`, and a
/// node may ask only for its own.
fn node_client_request(user: &UserInfo, subject: &skiff_pki::Subject) -> Result<(), String> {
    let Some(node) = node_name(&subject.user) else {
        return Err(format!("the subject's CN must be {NODE_USER_PREFIX}<node name>, not {:?}", subject.user));
    };
    if subject.groups != [NODES_GROUP] {
        return Err(format!("the subject's O must be exactly {NODES_GROUP}, not {:?}", subject.groups));
    }
    let bootstrapper = user.groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP);
    if !bootstrapper && node_name(&user.name).is_some_and(|own| own != node) {
        return Err(format!("node {:?} may not ask for node {node:?}'s certificate", user.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(user: &str, groups: &[&str]) -> String {
        let made = skiff_pki::csr::request(user, groups, &[]).unwrap();
        base64::engine::general_purpose::STANDARD.encode(made.cert_pem)
    }

    fn object(request: &str) -> Vec<u8> {
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": KIND, "metadata": {"name": "node-csr-1"},
               "spec": {"request": request, "signerName": KUBELET_CLIENT_SIGNER, "usages": ["client auth"],
                        "username": "system:masters-wannabe", "groups": ["system:masters"]}})
        .to_string()
        .into_bytes()
    }

    fn bootstrapper() -> UserInfo {
        UserInfo {
            name: "system:bootstrap:abcdef".into(),
            uid: String::new(),
            groups: vec![BOOTSTRAPPERS_GROUP.into()],
        }
    }

    #[test]
    fn the_requester_is_who_called_not_who_the_body_says() {
        let stored = admit_create(&bootstrapper(), KIND, &object(&csr("system:node:n1", &[NODES_GROUP]))).unwrap();
        let stored: Value = serde_json::from_slice(&stored.unwrap()).unwrap();
        assert_eq!(stored["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(stored["spec"]["groups"], json!([BOOTSTRAPPERS_GROUP]));
    }

    #[test]
    fn a_bad_request_is_refused_naming_the_field() {
        for request in ["", "bm90IGEgY3Ny", &csr("alice", &[])] {
            let refused = admit_create(&bootstrapper(), KIND, &object(request)).unwrap_err();
            assert!(refused.to_string().contains("spec.request"), "{refused}");
        }
        let wrong_group = admit_create(&bootstrapper(), KIND, &object(&csr("system:node:n1", &["system:masters"])));
        assert!(wrong_group.unwrap_err().to_string().contains("system:nodes"));
    }

    #[test]
    fn a_node_asks_only_for_itself() {
        let n1 = UserInfo { name: "system:node:n1".into(), uid: String::new(), groups: vec![NODES_GROUP.into()] };
        assert!(admit_create(&n1, KIND, &object(&csr("system:node:n1", &[NODES_GROUP]))).is_ok());
        assert!(admit_create(&n1, KIND, &object(&csr("system:node:n2", &[NODES_GROUP]))).is_err());
    }
}
