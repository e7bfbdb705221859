use clap::Parser;

/// skiff's node network agent: WireGuard between nodes, nftables for Services.
#[derive(Parser)]
#[command(name = "skiff-overlay", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_overlay::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-overlay")?;
    let result = skiff_overlay::run(cli.config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-overlay failed");
    }
    telemetry.shutdown().await;
    result
}
