//! `skiffctl token create|list|delete`: bootstrap tokens, as `kubeadm
//! token`. A token `ID.SECRET` is a Secret `kube-system/bootstrap-token-ID`
//! of type `bootstrap.kubernetes.io/token`; a node presents it once, to ask
//! for its own certificate (`skiff-kubelet --bootstrap-kubeconfig`).
//! Deleting the token (or its expiry) stops new nodes joining with it, not
//! the nodes that already did.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use skiff_api::well_known::{BOOTSTRAP_TOKEN_SECRET_PREFIX, BOOTSTRAP_TOKEN_SECRET_TYPE};

use super::Globals;

const NAMESPACE: &str = "kube-system";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it.
    Create(CreateArgs),
    /// List tokens: ID, expiry, description.
    List,
    /// Delete a token by its ID (or the whole token).
    Delete { token: String },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// How long the token is valid (0: forever).
    #[arg(long, default_value = "24h", value_parser = skiff_api::parse_duration)]
    pub ttl: Duration,
    /// Why the token exists, shown by `token list`.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Print the command that joins a node with this token
    /// (`deploy/install.sh node ...`), with the server and the cluster CA
    /// of this client's config.
    #[arg(long)]
    pub print_join_command: bool,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let client = globals.client()?;
    match args.command {
        TokenCommand::Create(args) => {
            let (id, secret) = (random(6), random(16));
            client.create("Secret", NAMESPACE, &secret_for(&id, &secret, &args)).await?;
            if args.print_join_command {
                outln!("{}", join_command(globals, &format!("{id}.{secret}"))?);
            } else {
                outln!("{id}.{secret}");
            }
        }
        TokenCommand::List => {
            let list = client.list("Secret", NAMESPACE, &Default::default()).await?;
            outln!("{:<8} {:<22} DESCRIPTION", "ID", "EXPIRES");
            for secret in list.items.iter().filter(|s| s["type"] == BOOTSTRAP_TOKEN_SECRET_TYPE) {
                let field = |name| data(secret, name).unwrap_or_default();
                let expires = data(secret, "expiration").unwrap_or_else(|| "<never>".into());
                outln!("{:<8} {expires:<22} {}", field("token-id"), field("description"));
            }
        }
        TokenCommand::Delete { token } => {
            let id = token.split('.').next().unwrap_or_default();
            if id.is_empty() {
                bail!("a token ID (or the whole token) is needed");
            }
            let name = format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}");
            client.delete("Secret", NAMESPACE, &name).await.with_context(|| format!("token {id}"))?;
            outln!("bootstrap token {id} deleted");
        }
    }
    Ok(())
}

/// The token's Secret: usable to authenticate, not to sign anything.
fn secret_for(id: &str, secret: &str, args: &CreateArgs) -> Value {
    let mut data = json!({
        "token-id": id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "auth-extra-groups": "system:bootstrappers:skiff:default-node-token",
    });
    if !args.ttl.is_zero() {
        let expires = chrono::Utc::now() + chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
        data["expiration"] = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    }
    if !args.description.is_empty() {
        data["description"] = args.description.clone().into();
    }
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": BOOTSTRAP_TOKEN_SECRET_TYPE,
        "metadata": {"name": format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}"), "namespace": NAMESPACE},
        "stringData": data,
    })
}

/// `install.sh node` with this client's server, its CA (inline: it is
/// public, and the node needs it before it can trust anything) and `token`.
fn join_command(globals: &Globals, token: &str) -> Result<String> {
    let config = skiff_client::ClientConfig::resolve(&globals.api)?;
    let ca = config.certificate_authority.context("this client's config names no certificate-authority")?;
    let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
    let ca = base64::engine::general_purpose::STANDARD.encode(pem);
    Ok(format!("deploy/install.sh node --server {} --token {token} --ca-cert-base64 {ca}", config.server))
}

fn data(secret: &Value, name: &str) -> Option<String> {
    let encoded = secret["data"][name].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()
}

/// `n` characters of `[a-z0-9]` from the OS's random source.
fn random(n: usize) -> String {
    (0..n).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_kubeadms_shape() {
        let (id, secret) = (random(6), random(16));
        assert_eq!((id.len(), secret.len()), (6, 16));
        assert!(format!("{id}{secret}").bytes().all(|b| ALPHABET.contains(&b)));
        let args =
            CreateArgs { ttl: Duration::from_secs(3600), description: "for node-3".into(), print_join_command: false };
        let stored = secret_for(&id, &secret, &args);
        assert_eq!(stored["metadata"]["name"], format!("bootstrap-token-{id}"));
        assert_eq!(stored["stringData"]["token-secret"], secret);
        assert!(stored["stringData"]["expiration"].as_str().unwrap().ends_with('Z'));
        let forever = CreateArgs { ttl: Duration::ZERO, description: String::new(), print_join_command: false };
        let forever = secret_for(&id, &secret, &forever);
        assert!(forever["stringData"]["expiration"].is_null());
    }
}
