//! RBAC's escalation prevention, as Kubernetes' RBAC storage does it: the
//! right to write RBAC objects is not the right to grant oneself more.
//!
//! - Writing a Role or ClusterRole needs every permission it grants (in the
//!   Role's namespace; cluster-wide for a ClusterRole), or the verb
//!   `escalate` on it. An aggregated ClusterRole's rules come from others,
//!   so it needs `escalate`.
//! - Writing a RoleBinding or ClusterRoleBinding needs every permission of
//!   the role it binds (in the binding's namespace; cluster-wide for a
//!   ClusterRoleBinding), or the verb `bind` on that role.
//!
//! Only under RBAC: with AlwaysAllow everyone may escalate anyway. Rules of
//! non-resource URLs only are not checked: skiff serves no such URL behind
//! authorization.

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;
use skiff_api::well_known::RBAC_GROUP;

use super::rbac::{Attributes, UserInfo};
use super::Authorizer;
use crate::registry::Registry;
use crate::Error;

/// What a write sends: a whole object (create, update) or a merge patch.
pub enum Written<'a> {
    Object(&'a [u8]),
    Patch(&'a [u8]),
}

/// Where the write lands.
pub struct Target<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Whether writes of `kind` are checked here.
pub fn guards(kind: &str) -> bool {
    matches!(kind, "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")
}

/// Ok unless `user` writes an RBAC object granting what it doesn't hold.
/// A body that doesn't decode passes: admission refuses it with the field named.
pub async fn admit(
    authorizer: &Authorizer,
    registry: &Registry,
    user: &UserInfo,
    target: &Target<'_>,
    written: Written<'_>,
) -> Result<(), Error> {
    let Authorizer::Rbac { rbac, .. } = authorizer else { return Ok(()) };
    if !guards(target.kind) {
        return Ok(());
    }
    let body: Value = match written {
        Written::Object(bytes) | Written::Patch(bytes) => match serde_json::from_slice(bytes) {
            Ok(body) => body,
            Err(_) => return Ok(()),
        },
    };
    let policy = rbac.policy();
    let scope = if target.kind.starts_with("Cluster") { "" } else { target.namespace };
    let result = match target.kind {
        "Role" | "ClusterRole" => {
            let allowed = |verb| allowed(authorizer, user, verb, target.kind, scope, target.name);
            if allowed("escalate") {
                return Ok(());
            }
            if body.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                Err(format!("user {:?} may not write an aggregated ClusterRole without the escalate verb", user.name))
            } else {
                // A patch without rules leaves the stored ones, already checked.
                let Some(rules) = body.get("rules") else { return Ok(()) };
                let Ok(rules) = serde_json::from_value::<Vec<PolicyRule>>(rules.clone()) else { return Ok(()) };
                policy.covers(user, scope, &rules)
            }
        }
        _ => {
            let role_ref = match (body.get("roleRef"), &written) {
                (Some(role_ref), _) => role_ref.clone(),
                // roleRef can't change: a patch binds the stored one.
                (None, Written::Patch(_)) => {
                    let stored = registry.get_value_cached(target.kind, target.namespace, target.name).await?;
                    stored.get("roleRef").cloned().unwrap_or_default()
                }
                (None, Written::Object(_)) => return Ok(()),
            };
            let Ok(role_ref) = serde_json::from_value::<RoleRef>(role_ref) else { return Ok(()) };
            if allowed(authorizer, user, "bind", &role_ref.kind, scope, &role_ref.name) {
                return Ok(());
            }
            policy.covers_role(user, scope, &role_ref.kind, &role_ref.name)
        }
    };
    result.map_err(|why| {
        Error::Denied(format!("{why}: RBAC grants only what the writer holds (or may escalate or bind)"))
    })
}

/// Whether `user` may `verb` (escalate, bind) the role `kind`/`name` in
/// `namespace` ("" cluster-wide), as Kubernetes asks the authorizer.
fn allowed(authorizer: &Authorizer, user: &UserInfo, verb: &str, kind: &str, namespace: &str, name: &str) -> bool {
    let resource = if kind == "Role" { "roles" } else { "clusterroles" };
    let attributes = Attributes { verb, api_group: RBAC_GROUP, resource, subresource: "", namespace, name };
    authorizer.authorize_attributes(user, &attributes).is_ok()
}
