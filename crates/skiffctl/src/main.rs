//! `skiffctl`, skiff's kubectl: apply manifests, get, describe and delete
//! objects. Each command is one file under `commands/` calling the client.
#![forbid(unsafe_code)]

// First, so that its macros are in scope in every module after it.
#[macro_use]
mod output;

mod commands;
mod describe;
mod manifest;
mod merge;
mod resource;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use commands::{AlreadyReported, Command, ExitStatus, Globals};
use tracing::Instrument as _;

#[derive(Debug, clap::Parser)]
#[command(name = "skiffctl", version, about = "Control a skiff cluster")]
struct Cli {
    #[command(flatten)]
    api: skiff_client::ApiFlags,
    /// The namespace for namespaced kinds.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let command_name = matches.subcommand_name().unwrap_or_default().to_string();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Exports this command's span, and so the trace its requests join, only
    // when OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise it installs nothing.
    let telemetry = match skiff_telemetry::init_cli("skiffctl") {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let globals = Globals { api: cli.api, namespace: cli.namespace };
    let span = tracing::info_span!("skiffctl", otel.name = format!("skiffctl {command_name}"));
    let result = commands::run(&globals, cli.command).instrument(span).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Already explained on stderr, one line per failure.
        Err(e) if e.is::<AlreadyReported>() => ExitCode::FAILURE,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(output::BROKEN_PIPE_STATUS),
        // The exit status of a command run elsewhere (exec), passed on.
        Err(e) if e.is::<ExitStatus>() => ExitCode::from(e.downcast_ref::<ExitStatus>().map_or(1, |s| s.0)),
        Err(e) => {
            eprintln!("error: {}", commands::error_message(&e));
            ExitCode::FAILURE
        }
    }
}
