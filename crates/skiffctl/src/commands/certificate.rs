//! `skiffctl certificate approve|deny NAME...`: decide a
//! CertificateSigningRequest by hand, as kubectl does, for requests no
//! approver takes (another signer's, or a node's the controller-manager
//! does not approve on its own). The signer then signs an approved one.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: CertificateCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertificateCommand {
    /// Approve requests.
    Approve { names: Vec<String> },
    /// Deny requests.
    Deny { names: Vec<String> },
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let (decision, names) = match args.command {
        CertificateCommand::Approve { names } => ("Approved", names),
        CertificateCommand::Deny { names } => ("Denied", names),
    };
    if names.is_empty() {
        bail!("name at least one certificatesigningrequest");
    }
    let client = globals.client()?;
    for name in names {
        let mut csr = client.get("CertificateSigningRequest", "", &name).await?;
        if let Some(taken) = decided(&csr) {
            outln!("certificatesigningrequest/{name} already {}", taken.to_lowercase());
            continue;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let condition = json!({"type": decision, "status": "True", "reason": "SkiffctlCertificate",
                               "message": format!("{decision} with skiffctl certificate"),
                               "lastUpdateTime": now, "lastTransitionTime": now});
        let conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
        csr["status"]["conditions"] = Value::Array([conditions, vec![condition]].concat());
        client.update_status("CertificateSigningRequest", "", &csr).await?;
        outln!("certificatesigningrequest/{name} {}", decision.to_lowercase());
    }
    Ok(())
}

/// `Approved` or `Denied`, if the request was decided.
fn decided(csr: &Value) -> Option<String> {
    let conditions = csr["status"]["conditions"].as_array()?;
    conditions
        .iter()
        .find(|c| (c["type"] == "Approved" || c["type"] == "Denied") && c["status"] == "True")
        .and_then(|c| c["type"].as_str().map(str::to_string))
}
