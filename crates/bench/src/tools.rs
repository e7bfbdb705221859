//! The programs a baseline runs, found before the scenario starts, so a
//! missing one fails the run instead of leaving a figure without its
//! baseline.

use std::path::PathBuf;

use crate::error::Error;

/// Where Debian puts daemons (nginx, haproxy, dnsmasq), which a user's
/// PATH often leaves out.
const SBIN: [&str; 2] = ["/usr/sbin", "/sbin"];

/// `tool`'s path on PATH, else in [`SBIN`]; `hint` says how to get it.
pub fn require(tool: &'static str, hint: &'static str) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
        .ok_or(Error::ToolMissing { tool, hint })
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_on_path_and_names_a_missing_one() {
        assert!(require("sh", "").is_ok());
        let missing = require("skiff-bench-no-such-tool", "install it").unwrap_err();
        assert_eq!(missing.to_string(), "skiff-bench-no-such-tool is not on PATH or in /usr/sbin: install it");
    }
}
