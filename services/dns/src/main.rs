use clap::Parser;

/// skiff's cluster DNS: Service and Pod names from the API, the rest forwarded.
#[derive(Parser)]
#[command(name = "skiff-dns", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_dns::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-dns")?;
    let result = skiff_dns::run(cli.config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-dns failed");
    }
    telemetry.shutdown().await;
    result
}
