//! Where the apiserver is: `--server`, else `SKIFF_SERVER`, else the config
//! file `skiffctl up` writes. Every skiff binary resolves it the same way.

use std::path::PathBuf;

use crate::Error;

/// The client config file: `$SKIFF_CONFIG`, else
/// `$XDG_CONFIG_HOME/skiff/config.yaml`, else `~/.config/skiff/config.yaml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("skiff").join("config.yaml")
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientConfig {
    pub server: String,
}

impl ClientConfig {
    pub fn load() -> Result<Option<Self>, Error> {
        let path = config_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Config { path: path.display().to_string(), reason: e.to_string() }),
        };
        serde_yaml_ng::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config { path: path.display().to_string(), reason: e.to_string() })
    }

    pub fn save(&self) -> Result<PathBuf, Error> {
        let path = config_path();
        let err = |e: &dyn std::fmt::Display| Error::Config { path: path.display().to_string(), reason: e.to_string() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let text = serde_yaml_ng::to_string(self).map_err(|e| err(&e))?;
        std::fs::write(&path, text).map_err(|e| err(&e))?;
        Ok(path)
    }
}

/// The apiserver address: the flag if given, else `SKIFF_SERVER`, else the
/// config file.
pub fn resolve_server(flag: Option<&str>) -> Result<String, Error> {
    if let Some(s) = flag.filter(|s| !s.is_empty()) {
        return Ok(s.to_string());
    }
    if let Ok(s) = std::env::var("SKIFF_SERVER") {
        if !s.is_empty() {
            return Ok(s);
        }
    }
    match ClientConfig::load()? {
        Some(c) if !c.server.is_empty() => Ok(c.server),
        _ => Err(Error::NoServer { path: config_path().display().to_string() }),
    }
}
