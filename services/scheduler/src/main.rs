use clap::Parser;

/// skiff's scheduler: binds pending pods to nodes that fit them.
#[derive(Parser)]
#[command(name = "skiff-scheduler", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_scheduler::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-scheduler")?;
    let result =
        skiff_scheduler::run(cli.config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-scheduler failed");
    }
    telemetry.shutdown().await;
    result
}
