//! `skiffctl create namespace NAME`.

use anyhow::Result;
use serde_json::json;

use super::Globals;
use crate::resource;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Create a namespace.
    #[command(visible_alias = "ns")]
    Namespace { name: String },
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    match args.what {
        What::Namespace { name } => {
            let info = resource::lookup("Namespace")?;
            let ns = json!({"apiVersion": info.api_version, "kind": info.kind, "metadata": {"name": name}});
            globals.client()?.create(info.kind, "", &ns).await?;
            outln!("{} created", resource::object_ref(info, &name));
        }
    }
    Ok(())
}
