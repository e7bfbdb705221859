//! The node's WireGuard key: generated once, kept in the state dir (mode
//! 0600) so a restarted overlay keeps its identity and peers need no update.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use wireguard_control::Key;

use crate::Error;

const KEY_FILE: &str = "wireguard.key";

/// The private key in `<state_dir>/wireguard.key`, created if missing.
pub fn load_or_create(state_dir: &Path) -> Result<Key, Error> {
    let path = state_dir.join(KEY_FILE);
    let io = |what| {
        let path = path.display().to_string();
        move |source| Error::Io { what, path, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Key::from_base64(text.trim())
            .map_err(|_| Error::WireGuard { what: format!("{} does not hold a base64 WireGuard key", path.display()) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir).map_err(io("creating"))?;
            let key = Key::generate_private();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("creating"))?;
            writeln!(file, "{}", key.to_base64()).map_err(io("writing"))?;
            tracing::info!(path = %path.display(), "generated this node's WireGuard key");
            Ok(key)
        }
        Err(e) => Err(io("reading")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        assert!(load_or_create(dir.path()).is_err());
    }
}
