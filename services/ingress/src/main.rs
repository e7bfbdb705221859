use clap::Parser;

/// skiff's HTTP ingress: Ingresses of class skiff, served through pingora.
#[derive(Parser)]
#[command(name = "skiff-ingress", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_ingress::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-ingress")?;
    let result = skiff_ingress::run(cli.config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-ingress failed");
    }
    telemetry.shutdown().await;
    result
}
