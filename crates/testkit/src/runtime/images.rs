//! Test images, built here from files on this machine and never pulled:
//!
//! - `busybox:latest`: busybox-static and a symlink per applet, `cmd /bin/sh`;
//! - `pause:3.6`: the same rootfs running `sleep infinity`, the sandbox image;
//! - `testserver:latest`: busybox plus `skiff-testserver` (and the shared
//!   libraries `ldd` names, as it is linked dynamically), listening on 8080.
//!
//! umoci builds them into one OCI layout in the image cache
//! ([`image_cache_dir`]), in a folder named by a hash of the inputs (the
//! two binaries), so a rebuilt testserver gives new images and an unchanged
//! one costs nothing. skopeo pushes them; a marker in the registry's folder
//! remembers which build it holds.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use super::{io_err, run, Registry};
use crate::Result;

pub const BUSYBOX_IMAGE: &str = "busybox:latest";
pub const PAUSE_IMAGE: &str = "pause:3.6";
pub const TESTSERVER_IMAGE: &str = "testserver:latest";

const BUSYBOX_BIN: &str = "/bin/busybox";
const TESTSERVER_BIN: &str = "skiff-testserver";
/// Bump when the recipe below changes, so cached layouts are rebuilt.
const RECIPE_VERSION: u32 = 1;
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// (tag in the OCI layout, reference in the registry)
const IMAGES: [(&str, &str); 3] =
    [("busybox", BUSYBOX_IMAGE), ("pause", PAUSE_IMAGE), ("testserver", TESTSERVER_IMAGE)];

/// One build at a time in this process: parallel tests share the result.
static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where built images are kept between runs: `$SKIFF_IMAGE_CACHE`, else
/// `$XDG_CACHE_HOME/skiff/images`, else `~/.cache/skiff/images`.
pub fn image_cache_dir() -> PathBuf {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SKIFF_IMAGE_CACHE") {
        return dir;
    }
    match (var("XDG_CACHE_HOME"), var("HOME")) {
        (Some(cache), _) => cache.join("skiff/images"),
        (None, Some(home)) => home.join(".cache/skiff/images"),
        (None, None) => std::env::temp_dir().join("skiff-images"),
    }
}

/// The images hold busybox and nothing else: a dynamically linked one
/// (Debian's `busybox` rather than `busybox-static`) can't start in them.
fn ensure_static(bin: &Path) -> Result<()> {
    let head = std::fs::read(bin).map_err(io_err("reading", bin))?;
    // A dynamic ELF names its loader in PT_INTERP, near the start.
    let dynamic = head[..head.len().min(4096)].windows(7).any(|w| w == b"ld-linu");
    if dynamic {
        return Err(crate::Error::Command {
            what: "building the test images".into(),
            command: format!("file {}", bin.display()),
            status: "dynamically linked".into(),
            stderr: "the test images need a static busybox: apt-get install busybox-static (scripts/install-deps)"
                .into(),
        });
    }
    Ok(())
}

/// Makes sure `registry` holds [`BUSYBOX_IMAGE`], [`PAUSE_IMAGE`] and
/// [`TESTSERVER_IMAGE`] as built from the current binaries: builds them
/// into the cache if missing, pushes them if the registry lacks this build.
/// Idempotent. Needs `skiff-testserver` built (`cargo build -p skiff-testserver`).
pub async fn ensure_test_images(registry: &Registry) -> Result<()> {
    let testserver = crate::binary(TESTSERVER_BIN)?;
    ensure_static(Path::new(BUSYBOX_BIN))?;
    let _guard = BUILD.lock().await;
    let key = inputs_key(&[Path::new(BUSYBOX_BIN), &testserver])?;
    let layout = cached_layout(&key, &testserver).await?;
    let marker = registry.dir().join("pushed-images");
    if std::fs::read_to_string(&marker).is_ok_and(|k| k.trim() == key) {
        return Ok(());
    }
    for (tag, reference) in IMAGES {
        let src = format!("oci:{}:{tag}", layout.display());
        let dest = format!("docker://{}", registry.image(reference));
        run(
            "pushing a test image",
            "skopeo",
            &["copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false", &src, &dest],
        )
        .await?;
    }
    std::fs::write(&marker, &key).map_err(io_err("writing", &marker))?;
    Ok(())
}

/// A hash of the recipe version and the bytes of every input file.
fn inputs_key(files: &[&Path]) -> Result<String> {
    // SipHash with fixed keys: stable for a given toolchain, which is all a
    // cache key needs (a new toolchain only means one rebuild).
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    h.write_u32(RECIPE_VERSION);
    for f in files {
        let bytes = std::fs::read(f).map_err(io_err("reading", f))?;
        h.write_usize(bytes.len());
        h.write(&bytes);
    }
    Ok(format!("{:016x}", h.finish()))
}

/// The OCI layout for `key`, built first if the cache lacks it.
async fn cached_layout(key: &str, testserver: &Path) -> Result<PathBuf> {
    let cache = image_cache_dir();
    let done = cache.join(key);
    let layout = done.join("oci");
    if layout.join("index.json").is_file() {
        return Ok(layout);
    }
    std::fs::create_dir_all(&cache).map_err(io_err("creating", &cache))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&cache)
        .map_err(io_err("creating a build dir in", &cache))?;
    let started = std::time::Instant::now();
    build(work.path(), testserver).await?;
    // Only the finished build is renamed into place, so another process
    // building at the same time (or a crash half-way) never leaves a torn
    // layout behind; whoever renames second just drops its copy.
    let built = work.path().join("out");
    if std::fs::rename(&built, &done).is_err() && !layout.join("index.json").is_file() {
        let e = std::io::Error::other("build folder could not be moved into the cache");
        return Err(io_err("caching images in", &done)(e));
    }
    tracing::info!(dir = %done.display(), elapsed = ?started.elapsed(), "built test images");
    remove_stale_builds(&cache, key);
    Ok(layout)
}

/// Builds the three images into `<work>/out/oci`, using `<work>` for bundles.
async fn build(work: &Path, testserver: &Path) -> Result<()> {
    let out = work.join("out");
    std::fs::create_dir_all(&out).map_err(io_err("creating", &out))?;
    let oci = out.join("oci");
    let l = oci.display().to_string();
    let img = |tag: &str| format!("{l}:{tag}");
    let bundle = work.join("bundle");
    let b = bundle.display().to_string();
    let rootfs = bundle.join("rootfs");

    run("creating an OCI layout", "umoci", &["init", "--layout", &l]).await?;
    run("creating an image", "umoci", &["new", "--image", &img("busybox")]).await?;
    run("unpacking an image", "umoci", &["unpack", "--image", &img("busybox"), &b]).await?;
    busybox_rootfs(&rootfs).await?;
    run("repacking busybox", "umoci", &["repack", "--image", &img("busybox"), &b]).await?;
    run(
        "configuring pause",
        "umoci",
        &[
            "config",
            "--image",
            &img("busybox"),
            "--tag",
            "pause",
            "--config.env",
            PATH_ENV,
            "--config.cmd",
            "/bin/sleep",
            "--config.cmd",
            "infinity",
        ],
    )
    .await?;

    // The bundle still holds the busybox rootfs: add the server and repack
    // it as a new tag, so testserver shares busybox's layer.
    add_testserver(&rootfs, testserver).await?;
    run("repacking testserver", "umoci", &["repack", "--image", &img("testserver"), &b]).await?;
    run(
        "configuring testserver",
        "umoci",
        &[
            "config",
            "--image",
            &img("testserver"),
            "--config.env",
            PATH_ENV,
            "--config.env",
            "PORT=8080",
            "--config.entrypoint",
            "/bin/skiff-testserver",
            "--config.exposedports",
            "8080/tcp",
        ],
    )
    .await?;
    run(
        "configuring busybox",
        "umoci",
        &["config", "--image", &img("busybox"), "--config.env", PATH_ENV, "--config.cmd", "/bin/sh"],
    )
    .await?;
    run("collecting unused blobs", "umoci", &["gc", "--layout", &l]).await?;
    Ok(())
}

/// busybox-static with a symlink per applet, and the folders and files a
/// container expects to find.
async fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/run"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = rootfs.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).map_err(io_err("chmod", &tmp))?;
    let bin = rootfs.join("bin/busybox");
    std::fs::copy(BUSYBOX_BIN, &bin).map_err(io_err("copying busybox to", &bin))?;
    let list = run("listing busybox applets", BUSYBOX_BIN, &["--list"]).await?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = rootfs.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io_err("linking", &link))?;
    }
    for (file, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        let p = rootfs.join(file);
        std::fs::write(&p, text).map_err(io_err("writing", &p))?;
    }
    Ok(())
}

/// Copies the testserver binary to `/bin/skiff-testserver` and every shared
/// library `ldd` names to the same path inside `rootfs`.
async fn add_testserver(rootfs: &Path, testserver: &Path) -> Result<()> {
    let dest = rootfs.join("bin/skiff-testserver");
    std::fs::copy(testserver, &dest).map_err(io_err("copying the testserver to", &dest))?;
    let ldd = run("listing the testserver's libraries", "ldd", &[&testserver.display().to_string()]).await?;
    for lib in String::from_utf8_lossy(&ldd.stdout).lines().filter_map(library_path) {
        let inside = rootfs.join(lib.trim_start_matches('/'));
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        // fs::copy follows symlinks: the file lands under the name the
        // loader asks for.
        std::fs::copy(&lib, &inside).map_err(io_err("copying a library to", &inside))?;
    }
    Ok(())
}

/// The absolute path in one `ldd` line: `libc.so.6 => /lib/…/libc.so.6 (0x…)`
/// or `/lib64/ld-linux-x86-64.so.2 (0x…)`; none for the vDSO.
fn library_path(line: &str) -> Option<String> {
    let line = line.trim();
    let candidate = match line.split_once("=>") {
        Some((_, right)) => right.split_whitespace().next()?,
        None => line.split_whitespace().next()?,
    };
    candidate.starts_with('/').then(|| candidate.to_string())
}

/// Removes builds for other keys (older binaries); best effort.
fn remove_stale_builds(cache: &Path, key: &str) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name != key && !name.starts_with(".build-") && name.len() == key.len() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::library_path;

    #[test]
    fn ldd_lines() {
        assert_eq!(
            library_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)").as_deref(),
            Some("/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            library_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)").as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(library_path("\tlinux-vdso.so.1 (0x00007ffd)"), None);
    }
}
