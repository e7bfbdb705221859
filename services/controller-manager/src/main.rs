use clap::Parser;

/// skiff's controller manager: runs the built-in controllers while it holds
/// the `skiff-controller-manager` lease.
#[derive(Parser)]
#[command(name = "skiff-controller-manager", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_controller_manager::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-controller-manager")?;
    let result = skiff_controller_manager::run(cli.config, skiff_telemetry::shutdown_signal())
        .await
        .map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-controller-manager failed");
    }
    telemetry.shutdown().await;
    result
}
