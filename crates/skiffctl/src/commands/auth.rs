//! `skiffctl auth can-i VERB KIND[/NAME]`: asks the apiserver whether the
//! caller (or, with `--as`, another user) may do something, as kubectl
//! does: prints `yes` or `no` and exits 0 or 1.

use anyhow::Result;
use skiff_api::proto::AccessReviewRequest;

use super::{AlreadyReported, Globals};
use crate::resource;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Whether an action is allowed: `auth can-i list pods -n demo`.
    CanI(CanIArgs),
}

#[derive(Debug, clap::Args)]
pub struct CanIArgs {
    /// get, list, watch, create, update, patch, delete (or `*`).
    pub verb: String,
    /// A kind, plural or short name, optionally with a name: pods, deploy/web.
    pub resource: String,
    /// A subresource: status, log, exec, binding.
    #[arg(long, default_value = "")]
    pub subresource: String,
    /// Ask about this user instead of yourself.
    #[arg(long = "as")]
    pub as_user: Option<String>,
    /// The groups of the `--as` user (repeatable).
    #[arg(long = "as-group", requires = "as_user")]
    pub as_groups: Vec<String>,
    /// Print why not, when the answer is no.
    #[arg(short, long)]
    pub verbose: bool,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let AuthCommand::CanI(args) = args.command;
    let (kind, name) = match args.resource.split_once('/') {
        Some((kind, name)) => (kind, name),
        None => (args.resource.as_str(), ""),
    };
    // `deployments.apps` names the group too; kinds are unique without it.
    let info = resource::lookup(kind.split('.').next().unwrap_or(kind))?;
    let request = AccessReviewRequest {
        verb: args.verb,
        kind: info.kind.into(),
        subresource: args.subresource,
        namespace: globals.namespace.clone(),
        name: name.into(),
        user: args.as_user.unwrap_or_default(),
        groups: args.as_groups,
    };
    let reply = globals.client()?.objects().review_access(request).await.map_err(skiff_client::Error::from)?;
    let reply = reply.into_inner();
    if reply.allowed {
        outln!("yes");
        return Ok(());
    }
    outln!("no");
    if args.verbose && !reply.reason.is_empty() {
        eprintln!("{}", reply.reason);
    }
    // kubectl's answer is the exit status too: 1 for no.
    Err(AlreadyReported.into())
}
