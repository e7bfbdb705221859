//! `skiffctl sample-images DIR`: builds the images the sample app and the
//! tests run (busybox, pause, testserver: from this machine's busybox-static
//! and skiff-testserver, nothing pulled) into a registry's storage under
//! DIR, by pushing them to a registry started there for the purpose.
//! `scripts/images` bakes that storage into the `skiff-registry` image.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use skiff_testkit::runtime::{ensure_test_images, Registry, BUSYBOX_IMAGE, PAUSE_IMAGE, TESTSERVER_IMAGE};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder whose `registry/storage` receives the images.
    pub dir: PathBuf,
}

pub async fn run(args: Args) -> Result<()> {
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), skiff_testkit::free_port());
    let registry = Registry::start(&args.dir, addr, false).await.context("starting a registry (docker-registry)")?;
    ensure_test_images(&registry).await.context("building and pushing the sample images")?;
    let storage = registry.dir().join("storage");
    drop(registry);
    for image in [BUSYBOX_IMAGE, PAUSE_IMAGE, TESTSERVER_IMAGE] {
        outln!("{image}");
    }
    outln!("stored under {}", storage.display());
    Ok(())
}
