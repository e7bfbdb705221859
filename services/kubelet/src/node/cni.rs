//! The node's CNI config, written from the podCIDR the controller-manager
//! assigned (`--cni-conf-dir`), as flannel or kubenet do: a bridge with
//! host-local IPAM on `spec.podCIDR`. containerd reloads its CNI config dir
//! on change, and reports NetworkReady (so the node turns Ready) once the
//! file is there.
//!
//! No masquerading here: skiff-overlay masquerades what leaves the pod
//! network, and keeps pod-to-pod traffic across nodes unNATed.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Node;
use skiff_client::{Client, Informer, ListParams};
use skiff_telemetry::Stop;

use crate::Error;

/// The file written into the conf dir.
pub const CONFLIST: &str = "10-skiff.conflist";

/// Where and how to write the CNI config.
#[derive(Debug, Clone)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bridge: String,
    pub mtu: u32,
    /// host-local IPAM's dataDir (one per node when nodes share a disk).
    pub ipam_dir: PathBuf,
}

impl CniSettings {
    /// The conflist for `pod_cidr`.
    pub fn conflist(&self, pod_cidr: &str) -> String {
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "plugins": [
                {
                    "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
                    "hairpinMode": true, "mtu": self.mtu,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        format!("{config:#}\n")
    }

    /// Writes the conflist for `pod_cidr` unless it is there already;
    /// atomically, so containerd never reads half a file.
    pub fn write(&self, pod_cidr: &str) -> Result<bool, Error> {
        let path = self.conf_dir.join(CONFLIST);
        let text = self.conflist(pod_cidr);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return Ok(false);
        }
        let io = |source| Error::CniConfig { path: path.display().to_string(), source };
        std::fs::create_dir_all(&self.conf_dir).map_err(io)?;
        let tmp = self.conf_dir.join(format!(".{CONFLIST}.tmp"));
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(true)
    }
}

/// Watches this node and writes the CNI config whenever its podCIDR is set
/// or changes, until `stop`.
pub async fn run(client: Client, node: String, settings: CniSettings, stop: Stop) {
    let params = ListParams { field_selector: format!("metadata.name={node}"), ..Default::default() };
    let informer = Informer::new(client.api::<Node>(""), params);
    let store = informer.store();
    let mut events = informer.subscribe();
    tokio::spawn(informer.run(stop.raised()));
    loop {
        let cidr = store.get(&node).and_then(|n| n.spec.as_ref()?.pod_cidr.clone()).filter(|c| !c.is_empty());
        if let Some(cidr) = cidr {
            match settings.write(&cidr) {
                Ok(true) => {
                    tracing::info!(pod_cidr = %cidr, dir = %settings.conf_dir.display(), "wrote the CNI config")
                }
                Ok(false) => {}
                Err(error) => tracing::error!(error = format!("{error:#}"), "writing the CNI config"),
            }
        }
        tokio::select! {
            _ = stop.raised() => return,
            event = events.recv() => if event.is_none() { return },
        }
        while events.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_pod_cidr_once_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let settings = CniSettings {
            conf_dir: dir.path().join("net.d"),
            bridge: "cni0".into(),
            mtu: 1420,
            ipam_dir: dir.path().join("ipam"),
        };
        assert!(settings.write("10.42.3.0/24").unwrap());
        assert!(!settings.write("10.42.3.0/24").unwrap(), "unchanged config rewritten");
        let text = std::fs::read_to_string(dir.path().join("net.d").join(CONFLIST)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(json["plugins"][0]["mtu"], 1420);
        assert_eq!(json["plugins"][0]["ipMasq"], false);
        assert!(settings.write("10.42.4.0/24").unwrap());
    }
}
