//! A systemd-less runner for the units `deploy/install.sh` writes, for
//! tests on the hosts of a [`crate::netns::Lan`] (systemd is not PID 1
//! on these machines): a unit's `ExecStart` with its `EnvironmentFile`'s
//! `SKIFF_ARGS`, started as a [`Process`] in a host, as systemd would start
//! it on a real one. It reads what install.sh writes and nothing more: one
//! `ExecStart=PROGRAM $SKIFF_ARGS` and one `EnvironmentFile`, paths as
//! systemd sees them on the installed host (under `root` here).

use std::path::{Path, PathBuf};

use crate::netns::Host;
use crate::{Error, Process, Result};

/// One installed service, ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// `root/etc/systemd/system/NAME.service`, read.
pub fn load(root: &Path, name: &str) -> Result<Unit> {
    let path = root.join("etc/systemd/system").join(format!("{name}.service"));
    let text = std::fs::read_to_string(&path).map_err(crate::runtime::io_err("reading", &path))?;
    let bad = |why: &str| Error::Io {
        what: "reading a unit",
        path: path.display().to_string(),
        source: std::io::Error::other(why.to_string()),
    };
    let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(str::trim));
    let exec = value("ExecStart=").ok_or_else(|| bad("no ExecStart"))?;
    let (program, rest) = exec.split_once(' ').unwrap_or((exec, ""));
    if rest.trim() != "$SKIFF_ARGS" {
        return Err(bad("ExecStart is not `PROGRAM $SKIFF_ARGS`"));
    }
    let env_file = value("EnvironmentFile=").ok_or_else(|| bad("no EnvironmentFile"))?;
    let env_path = under(root, env_file);
    let env = std::fs::read_to_string(&env_path).map_err(crate::runtime::io_err("reading", &env_path))?;
    let args = env
        .lines()
        .find_map(|l| l.strip_prefix("SKIFF_ARGS="))
        .map(|v| v.trim().trim_matches('"').split_whitespace().map(str::to_string).collect())
        .ok_or_else(|| bad("its EnvironmentFile sets no SKIFF_ARGS"))?;
    // The installed program, else the host's own (containerd from Debian).
    let installed = under(root, program);
    let program = if installed.exists() { installed } else { PathBuf::from(program) };
    Ok(Unit { name: name.to_string(), program, args })
}

/// `path` (absolute, as on the installed host) under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

impl Unit {
    /// Starts it in `host`, logging under `dir` (see [`Host::spawn`] for
    /// `private_run`).
    pub fn spawn(&self, host: &Host, dir: &Path, private_run: bool) -> Result<Process> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        host.spawn(&self.name, &self.program, &args, dir, private_run, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_its_program_and_its_flags_file() {
        let root = tempfile::tempdir().unwrap();
        let units = root.path().join("etc/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::create_dir_all(root.path().join("etc/skiff")).unwrap();
        std::fs::write(
            units.join("skiff-x.service"),
            "[Service]\nEnvironmentFile=/etc/skiff/x.env\nExecStart=/usr/bin/true $SKIFF_ARGS\nRestart=always\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/skiff/x.env"), "SKIFF_ARGS=\"--a 1 --b=two\"\n").unwrap();
        let unit = load(root.path(), "skiff-x").unwrap();
        assert_eq!(unit.program, PathBuf::from("/usr/bin/true"));
        assert_eq!(unit.args, ["--a", "1", "--b=two"]);
        assert!(load(root.path(), "skiff-missing").is_err());
    }
}
