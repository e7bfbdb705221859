use clap::Parser;

// Every request allocates and frees small buffers (headers, bodies) on
// both runtime threads; mimalloc serves that with less CPU than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// skiff's HTTP ingress: Ingresses of class skiff, served through pingora.
#[derive(Parser)]
#[command(name = "skiff-ingress", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_ingress::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Cli::parse().config;
    let telemetry = skiff_telemetry::init("skiff-ingress")?;
    config.trace_requests = telemetry.exports_traces();
    let result = skiff_ingress::run(config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-ingress failed");
    }
    telemetry.shutdown().await;
    result
}
