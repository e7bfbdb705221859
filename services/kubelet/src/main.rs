use clap::Parser;

/// skiff's node agent: runs this node's pods in containerd through CRI, or
/// with `--hollow-nodes N` fakes N nodes for scale tests.
#[derive(Parser)]
#[command(name = "skiff-kubelet", version)]
struct Cli {
    #[command(flatten)]
    config: skiff_kubelet::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = skiff_telemetry::init("skiff-kubelet")?;
    let result = skiff_kubelet::run(cli.config, skiff_telemetry::shutdown_signal()).await.map_err(anyhow::Error::from);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skiff-kubelet failed");
    }
    telemetry.shutdown().await;
    result
}
