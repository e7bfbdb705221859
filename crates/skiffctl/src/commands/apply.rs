//! `skiffctl apply -f FILE|DIR|-`: create each object, or bring the live one
//! in line with its manifest. A failing document is reported and the rest
//! still applied; the exit status says whether all went through.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use skiff_api::meta;
use skiff_client::Client;

use super::{doc_label, error_message, several_sources, AlreadyReported, Globals, Target};
use crate::{manifest, merge, resource};

/// How many times a write that lost a race to another writer is redone.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A manifest file, a directory of them, or - for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let docs = manifest::read_all(&args.files)?;
    if docs.is_empty() {
        bail!("no objects passed to apply");
    }
    let client = globals.client()?;
    let several = several_sources(&docs);
    let mut failed = 0;
    for doc in &docs {
        let outcome = match Target::of(doc, &globals.namespace) {
            Ok(target) => apply(&client, target, &doc.object).await.map(|verb| (target, verb)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((target, verb)) => outln!("{} {verb}", resource::object_ref(target.info, target.name)),
            Err(e) => {
                eprintln!("error: {}: {}", doc_label(doc, several), error_message(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(AlreadyReported.into());
    }
    Ok(())
}

/// Creates or updates one object; says which (`created`, `configured`,
/// `unchanged`).
async fn apply(client: &Client, target: Target<'_>, manifest: &Value) -> Result<&'static str> {
    let kind = target.info.kind;
    let mut desired = manifest.clone();
    if let Some(root) = desired.as_object_mut() {
        // Status is the controllers' to write; a manifest's is ignored.
        root.remove("status");
    }
    if target.info.namespaced {
        meta::set(&mut desired, "namespace", target.namespace);
    } else {
        meta::remove(&mut desired, "namespace");
    }
    merge::record_last_applied(&mut desired, manifest);

    match client.create(kind, target.namespace, &desired).await {
        Ok(_) => return Ok("created"),
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e.into()),
    }
    for _ in 0..CONFLICT_RETRIES {
        let live = client.get(kind, target.namespace, target.name).await.context("reading the live object")?;
        let last = merge::last_applied(&live);
        let merged = merge::three_way(&live, last.as_ref(), &desired);
        if merged == live {
            return Ok("unchanged");
        }
        match client.update(kind, target.namespace, &merged).await {
            Ok(_) => return Ok("configured"),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("gave up after {CONFLICT_RETRIES} conflicting writes from others")
}
