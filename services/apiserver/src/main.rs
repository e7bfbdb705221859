use clap::Parser;

// The apiserver allocates and frees many small buffers per request (JSON,
// HTTP/2 frames); mimalloc serves that pattern with less CPU than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// skiff's API server: stores objects in etcd and serves them over gRPC.
#[derive(Parser)]
#[command(name = "skiff-apiserver", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_apiserver::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-apiserver")?;
    let result =
        skiff_apiserver::run(cli.config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-apiserver failed");
    }
    telemetry.shutdown().await;
    result
}
