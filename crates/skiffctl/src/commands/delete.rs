//! `skiffctl delete KIND NAME...`, `delete KIND -l SEL|--all` and
//! `delete -f FILE|DIR|-`. Every object is tried; the exit status says
//! whether all were deleted (a missing one counts as a failure unless
//! `--ignore-not-found`).

use anyhow::{bail, Result};
use skiff_api::{meta, KindInfo};
use skiff_client::{Client, ListParams};

use super::{doc_label, error_message, several_sources, AlreadyReported, Globals, Target};
use crate::{manifest, resource};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind, e.g. pods, deploy, svc (not with -f).
    pub kind: Option<String>,
    /// Objects to delete.
    pub names: Vec<String>,
    /// Manifests naming what to delete: a file, a directory, or - for stdin.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    /// Delete the objects of KIND whose labels match.
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// Delete every object of KIND in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Treat a missing object as deleted.
    #[arg(long)]
    pub ignore_not_found: bool,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    if !args.files.is_empty() {
        if args.kind.is_some() || args.selector.is_some() || args.all {
            bail!("-f cannot be combined with a kind, a selector or --all");
        }
        return from_manifests(globals, &args).await;
    }
    let Some(kind) = &args.kind else { bail!("name a kind and objects, or pass -f") };
    let info = resource::lookup(kind)?;
    let namespace = resource::scope(info, &globals.namespace);
    let client = globals.client()?;
    let names = match (&args.selector, args.all, args.names.is_empty()) {
        (None, false, false) => args.names.clone(),
        (Some(sel), false, true) => list_names(&client, info, namespace, sel).await?,
        (None, true, true) => list_names(&client, info, namespace, "").await?,
        (None, false, true) => bail!("name the {} to delete, or pass -l or --all", info.plural),
        _ => bail!("names, -l and --all exclude each other"),
    };
    if names.is_empty() {
        eprintln!("No resources found");
    }
    let mut failed = false;
    for name in &names {
        if let Err(e) = delete(&client, info, namespace, name, args.ignore_not_found).await {
            eprintln!("error: {}", error_message(&e));
            failed = true;
        }
    }
    if failed {
        return Err(AlreadyReported.into());
    }
    Ok(())
}

/// Deletes what the manifests name, last first, so that a namespace goes
/// after what it holds.
async fn from_manifests(globals: &Globals, args: &Args) -> Result<()> {
    let docs = manifest::read_all(&args.files)?;
    if docs.is_empty() {
        bail!("no objects passed to delete");
    }
    let client = globals.client()?;
    let several = several_sources(&docs);
    let mut failed = false;
    for doc in docs.iter().rev() {
        let result = match Target::of(doc, &globals.namespace) {
            Ok(t) => delete(&client, t.info, t.namespace, t.name, args.ignore_not_found).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            eprintln!("error: {}: {}", doc_label(doc, several), error_message(&e));
            failed = true;
        }
    }
    if failed {
        return Err(AlreadyReported.into());
    }
    Ok(())
}

async fn list_names(client: &Client, info: &KindInfo, namespace: &str, selector: &str) -> Result<Vec<String>> {
    let list = client.list(info.kind, namespace, &ListParams::default().labels(selector)).await?;
    Ok(list.items.iter().map(|o| meta::name(o).to_string()).collect())
}

async fn delete(client: &Client, info: &KindInfo, namespace: &str, name: &str, ignore_not_found: bool) -> Result<()> {
    match client.delete(info.kind, namespace, name).await {
        Ok(_) => outln!("{} deleted", resource::quoted_ref(info, name)),
        Err(e) if e.is_not_found() && ignore_not_found => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
