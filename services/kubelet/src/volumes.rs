//! Pod volumes on this host, under `<root-dir>/pods/<uid>/volumes/<plugin>/<name>`:
//!
//! - `emptyDir`: a directory; `medium: Memory` mounts a tmpfs on it
//!   (`mount -t tmpfs`), unmounted when the pod goes;
//! - `hostPath`: the host's path itself (created for `DirectoryOrCreate`
//!   and `FileOrCreate`);
//! - `configMap`, `secret`, `downwardAPI`: files written as Kubernetes does,
//!   into a fresh timestamped folder that the `..data` symlink is swapped
//!   to in one rename, each key a symlink through `..data`. A container
//!   thus sees either the old or the new set, never half; a changed object
//!   is written again on the pod's next sync (the kubelet watches
//!   ConfigMaps and Secrets and requeues the pods that use them).
//!
//! - `persistentVolumeClaim`: the bound volume's `local` or `hostPath`
//!   path; a local-path volume's folder is made on first use and removed
//!   when the volume is deleted.
//!
//! A volume naming a missing ConfigMap or Secret (not `optional`), or an
//! unbound claim, is an error naming it; the pod waits, with a
//! `FailedMount` Event, and is synced again when the claim changes.
//!
//! The files are small, so this does plain blocking file IO.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, DownwardAPIVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, KeyToPath,
    PersistentVolume, Pod, SecretVolumeSource, Volume,
};
use skiff_api::scheduling::volume_allows;
use skiff_api::well_known::{LOCAL_PATH_PROVISIONER, PROVISIONED_BY_ANNOTATION};
use skiff_client::InformerEvent;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::pods::Objects;
use crate::Error;

/// Where each of a pod's volumes is on the host, by volume name.
#[derive(Debug, Default, Clone)]
pub struct Prepared {
    pub paths: HashMap<String, PathBuf>,
    /// The ServiceAccount files, mounted at their well-known path.
    pub service_account: Option<PathBuf>,
}

/// The volumes of every pod on this node.
#[derive(Debug, Clone)]
pub struct Volumes {
    root: PathBuf,
}

/// Kubernetes' default mode for projected files.
const DEFAULT_MODE: u32 = 0o644;

impl Volumes {
    pub fn new(root_dir: &Path) -> Self {
        Self { root: root_dir.to_path_buf() }
    }

    /// The pod's own folder: volumes and its /etc/hosts.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Sets up (or refreshes) every volume of `pod`, and its ServiceAccount
    /// files when it gets them.
    pub fn prepare(
        &self,
        pod: &Pod,
        objects: &dyn Objects,
        service_account: Option<&crate::serviceaccount::Projection>,
    ) -> Result<Prepared, Error> {
        let mut prepared = Prepared::default();
        if let Some(projection) = service_account {
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            plain_folder_name(uid)?;
            let dir = self.pod_dir(uid).join("volumes").join("kubernetes.io~serviceaccount");
            let files = projection.files.iter().map(|(name, content)| (name.to_string(), content.clone())).collect();
            write_atomic(&dir, &files, DEFAULT_MODE)?;
            prepared.service_account = Some(dir);
        }
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
        for v in volumes {
            let path = self.prepare_one(pod, v, objects)?;
            prepared.paths.insert(v.name.clone(), path);
        }
        Ok(prepared)
    }

    /// Sets up one volume; returns where it is on the host.
    fn prepare_one(&self, pod: &Pod, v: &Volume, objects: &dyn Objects) -> Result<PathBuf, Error> {
        // The name becomes a folder of the pod's: whatever the apiserver let
        // through, it may not lead out of it.
        plain_folder_name(&v.name)?;
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let dir = |plugin: &str| self.pod_dir(uid).join("volumes").join(plugin).join(&v.name);
        if let Some(source) = &v.empty_dir {
            empty_dir(&dir("kubernetes.io~empty-dir"), source)
        } else if let Some(source) = &v.host_path {
            host_path(source)
        } else if let Some(source) = &v.config_map {
            config_map(&dir("kubernetes.io~configmap"), source, objects, ns)
        } else if let Some(source) = &v.secret {
            secret(&dir("kubernetes.io~secret"), source, objects, ns)
        } else if let Some(source) = &v.downward_api {
            downward_api(&dir("kubernetes.io~downward-api"), source, pod)
        } else if let Some(source) = &v.persistent_volume_claim {
            claimed_volume(&source.claim_name, objects, ns)
        } else {
            // projected, csi, nfs…: not on this node. Say so rather than
            // start a container without what it expects.
            Err(Error::Volume(format!("volume {:?} has a type this kubelet does not support", v.name)))
        }
    }

    /// Writes the pod's /etc/hosts: localhost and its own name.
    pub fn write_hosts(&self, uid: &str, hostname: &str, pod_ip: &str) -> Result<PathBuf, Error> {
        let dir = self.pod_dir(uid);
        create_dir(&dir)?;
        let path = dir.join("etc-hosts");
        let mut text = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        if !pod_ip.is_empty() {
            text.push_str(&format!("{pod_ip}\t{hostname}\n"));
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, text).map_err(io("writing", &path))?;
        }
        Ok(path)
    }

    /// Removes everything of pod `uid`: unmounts its tmpfs volumes, then
    /// deletes its folder.
    pub fn cleanup(&self, uid: &str) -> Result<(), Error> {
        let dir = self.pod_dir(uid);
        if !dir.exists() {
            return Ok(());
        }
        for mount in mounts_under(&dir) {
            let out = std::process::Command::new("umount").arg(&mount).output();
            if let Ok(out) = out {
                if !out.status.success() {
                    tracing::warn!(mount, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "umount failed");
                }
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))
    }

    /// The uids of the pods that have a folder here.
    pub fn pod_uids(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("pods"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

/// The value of a downward API field, as Kubernetes writes it.
pub fn downward_field(pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let pairs = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => pairs(m.labels.as_ref()),
        "metadata.annotations" => pairs(m.annotations.as_ref()),
        _ => return None,
    })
}

// === one function per volume source ===

/// A folder of the pod's own, on tmpfs for `medium: Memory`.
fn empty_dir(dir: &Path, source: &EmptyDirVolumeSource) -> Result<PathBuf, Error> {
    create_dir(dir)?;
    if source.medium.as_deref() == Some("Memory") {
        mount_tmpfs(dir, source.size_limit.as_ref().map(|q| q.0.as_str()))?;
    }
    Ok(dir.to_path_buf())
}

/// A path on the host, checked or created as its `type` says.
fn host_path(source: &HostPathVolumeSource) -> Result<PathBuf, Error> {
    let path = PathBuf::from(&source.path);
    match source.type_.as_deref().unwrap_or("") {
        "DirectoryOrCreate" => create_dir(&path)?,
        "FileOrCreate" if !path.exists() => {
            if let Some(parent) = path.parent() {
                create_dir(parent)?;
            }
            std::fs::File::create(&path).map_err(io("creating", &path))?;
        }
        "Directory" if !path.is_dir() => {
            return Err(Error::Volume(format!("hostPath {} is not a directory", source.path)))
        }
        "File" if !path.is_file() => return Err(Error::Volume(format!("hostPath {} is not a file", source.path))),
        _ => {}
    }
    Ok(path)
}

/// The folder of the volume a claim is bound to: a `local` or `hostPath`
/// volume's path. A local-path volume's folder is made on first use. An
/// unbound claim is an error the sync retries: the pod starts once the
/// claim is bound.
fn claimed_volume(claim_name: &str, objects: &dyn Objects, ns: &str) -> Result<PathBuf, Error> {
    let claim = objects
        .claim(ns, claim_name)
        .ok_or_else(|| Error::Volume(format!("persistentvolumeclaim {claim_name:?} not found")))?;
    let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty());
    let volume_name =
        volume_name.ok_or_else(|| Error::Volume(format!("persistentvolumeclaim {claim_name:?} is not bound yet")))?;
    let volume = objects
        .volume(volume_name)
        .ok_or_else(|| Error::Volume(format!("persistentvolume {volume_name:?} not found")))?;
    let spec = volume.spec.as_ref();
    if let Some(local) = spec.and_then(|s| s.local.as_ref()) {
        let path = PathBuf::from(&local.path);
        if provisioned_here(&volume) {
            create_dir(&path)?;
        } else if !path.is_dir() {
            return Err(Error::Volume(format!("local volume {volume_name:?}: {} is not a directory", local.path)));
        }
        return Ok(path);
    }
    match spec.and_then(|s| s.host_path.as_ref()) {
        Some(source) => host_path(source),
        None => {
            Err(Error::Volume(format!("persistentvolume {volume_name:?} has a type this kubelet does not support")))
        }
    }
}

/// Made by skiff's local-path provisioner, so its folder is ours to make
/// and, once the volume is deleted, to remove.
fn provisioned_here(volume: &PersistentVolume) -> bool {
    let annotations = volume.metadata.annotations.as_ref();
    annotations.and_then(|a| a.get(PROVISIONED_BY_ANNOTATION)).map(String::as_str) == Some(LOCAL_PATH_PROVISIONER)
}

/// Removes the folder of each deleted local-path volume that lived on
/// `node`: the data goes with the volume (reclaim policy Delete). A volume
/// deleted while this kubelet was down keeps its folder.
pub async fn remove_deleted_local_paths(mut events: UnboundedReceiver<InformerEvent<PersistentVolume>>, node: String) {
    while let Some(event) = events.recv().await {
        let InformerEvent::Deleted(volume) = event else { continue };
        let Some(local) = volume.spec.as_ref().and_then(|s| s.local.as_ref()) else { continue };
        if !provisioned_here(&volume) || !volume_allows(&volume, None, &node) {
            continue;
        }
        match std::fs::remove_dir_all(&local.path) {
            Ok(()) => {
                tracing::info!(volume = ?volume.metadata.name, path = %local.path, "removed a deleted volume's folder")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(path = %local.path, %error, "could not remove a deleted volume's folder"),
        }
    }
}

/// The ConfigMap's keys (or the chosen items) as files.
fn config_map(dir: &Path, source: &ConfigMapVolumeSource, objects: &dyn Objects, ns: &str) -> Result<PathBuf, Error> {
    let optional = source.optional.unwrap_or(false);
    let files = match objects.config_map(ns, &source.name) {
        Some(cm) => {
            let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, val) in cm.data.iter().flatten() {
                all.insert(k.clone(), val.clone().into_bytes());
            }
            for (k, val) in cm.binary_data.iter().flatten() {
                all.insert(k.clone(), val.0.clone());
            }
            select(all, source.items.as_deref(), "configmap", &source.name, optional)?
        }
        None if optional => BTreeMap::new(),
        None => return Err(Error::Volume(format!("configmap {:?} not found", source.name))),
    };
    write_atomic(dir, &files, source.default_mode.map_or(DEFAULT_MODE, |m| m as u32))?;
    Ok(dir.to_path_buf())
}

/// The Secret's keys (or the chosen items) as files.
fn secret(dir: &Path, source: &SecretVolumeSource, objects: &dyn Objects, ns: &str) -> Result<PathBuf, Error> {
    let name = source.secret_name.clone().unwrap_or_default();
    let optional = source.optional.unwrap_or(false);
    let files = match objects.secret(ns, &name) {
        Some(secret) => {
            let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, val) in secret.data.iter().flatten() {
                all.insert(k.clone(), val.0.clone());
            }
            for (k, val) in secret.string_data.iter().flatten() {
                all.insert(k.clone(), val.clone().into_bytes());
            }
            select(all, source.items.as_deref(), "secret", &name, optional)?
        }
        None if optional => BTreeMap::new(),
        None => return Err(Error::Volume(format!("secret {name:?} not found"))),
    };
    write_atomic(dir, &files, source.default_mode.map_or(DEFAULT_MODE, |m| m as u32))?;
    Ok(dir.to_path_buf())
}

/// The pod's own fields (fieldRef items) as files.
fn downward_api(dir: &Path, source: &DownwardAPIVolumeSource, pod: &Pod) -> Result<PathBuf, Error> {
    let mut files = BTreeMap::new();
    for item in source.items.iter().flatten() {
        let Some(field) = &item.field_ref else {
            return Err(Error::Volume(format!("downwardAPI {}: only fieldRef items are supported", item.path)));
        };
        let value = downward_field(pod, &field.field_path)
            .ok_or_else(|| Error::Volume(format!("downwardAPI field {:?} is not supported", field.field_path)))?;
        files.insert(item.path.clone(), value.into_bytes());
    }
    write_atomic(dir, &files, source.default_mode.map_or(DEFAULT_MODE, |m| m as u32))?;
    Ok(dir.to_path_buf())
}

/// The files of a ConfigMap or Secret: all keys, or only `items` (key →
/// path) when given. A missing key is an error unless optional.
fn select(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    kind: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let Some(items) = items else { return Ok(all) };
    let mut files = BTreeMap::new();
    for item in items {
        match all.get(&item.key) {
            Some(v) => {
                files.insert(item.path.clone(), v.clone());
            }
            None if optional => {}
            None => return Err(Error::Volume(format!("{kind} {name:?} has no key {:?}", item.key))),
        }
    }
    Ok(files)
}

/// Makes `dir` hold exactly `files` (relative paths), switching all of them
/// at once through the `..data` symlink; does nothing when they are there
/// already.
fn write_atomic(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> Result<(), Error> {
    for path in files.keys() {
        let bad = Path::new(path).components().any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad || path.starts_with("..") {
            return Err(Error::Volume(format!("volume file path {path:?} must be relative and stay inside")));
        }
    }
    create_dir(dir)?;
    let data = dir.join("..data");
    if current_files(&data).as_ref() == Some(files) {
        return Ok(());
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let fresh = dir.join(&stamp);
    create_dir(&fresh)?;
    for (path, content) in files {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            create_dir(parent)?;
        }
        let mut f = std::fs::File::create(&file).map_err(io("writing", &file))?;
        f.write_all(content).map_err(io("writing", &file))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777)).map_err(io("chmod", &file))?;
    }
    // The swap: a new symlink beside, renamed over the old one in one step.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io("linking", &tmp))?;
    std::fs::rename(&tmp, &data).map_err(io("swapping", &data))?;
    // Top-level names point through ..data, so they follow the swap.
    let top: std::collections::BTreeSet<String> =
        files.keys().filter_map(|p| p.split('/').next()).map(str::to_string).collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).map_err(io("linking", &link))?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_link = !name.starts_with("..") && !top.contains(&name);
        let old_data = name.starts_with("..") && name != "..data" && name != stamp;
        if stale_link {
            let _ = std::fs::remove_file(entry.path());
        } else if old_data {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// The files under `data` (following the ..data link), if readable.
fn current_files(data: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> Option<()> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path.strip_prefix(base).ok()?.to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).ok()?);
            }
        }
        Some(())
    }
    let mut out = BTreeMap::new();
    walk(data, data, &mut out)?;
    Some(out)
}

fn mount_tmpfs(dir: &Path, size: Option<&str>) -> Result<(), Error> {
    if !mounts_under(dir).is_empty() {
        return Ok(());
    }
    let mut cmd = std::process::Command::new("mount");
    cmd.args(["-t", "tmpfs"]);
    if let Some(size) = size {
        let bytes = skiff_api::quantity::parse_milli(size).map_err(Error::Volume)? / 1000;
        cmd.args(["-o", &format!("size={bytes}")]);
    }
    let out = cmd.arg("tmpfs").arg(dir).output().map_err(io("running mount for", dir))?;
    if !out.status.success() {
        return Err(Error::Volume(format!(
            "mount -t tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found
}

/// A volume's name becomes a folder under the pod's own: anything but one
/// plain path component (`/etc`, `..`, `a/b`) would put it elsewhere on the
/// host, whatever the apiserver let through.
fn plain_folder_name(name: &str) -> Result<(), Error> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(part)), None) if part == name => Ok(()),
        _ => Err(Error::Volume(format!("volume name {name:?} is not a plain folder name"))),
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::tests::MapObjects;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": volumes}
        }))
        .unwrap()
    }

    #[test]
    fn config_map_files_swap_atomically_and_follow_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let volumes = Volumes::new(tmp.path());
        let objects = MapObjects::default();
        objects.put_config_map("ns", "conf", &[("a.txt", "one"), ("b.txt", "two")]);
        let p = pod(json!([{"name": "cfg", "configMap": {"name": "conf"}}]));
        let prepared = volumes.prepare(&p, &objects, None).unwrap();
        let dir = prepared.paths["cfg"].clone();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert!(std::fs::symlink_metadata(dir.join("a.txt")).unwrap().file_type().is_symlink());
        let first = std::fs::read_link(dir.join("..data")).unwrap();

        volumes.prepare(&p, &objects, None).unwrap();
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first, "unchanged content is not rewritten");

        objects.put_config_map("ns", "conf", &[("a.txt", "uno")]);
        volumes.prepare(&p, &objects, None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "uno");
        assert!(!dir.join("b.txt").exists(), "a removed key goes");
        assert_ne!(std::fs::read_link(dir.join("..data")).unwrap(), first);
        let stamps = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(stamps, 1, "old data folders are removed");

        volumes.cleanup("u1").unwrap();
        assert!(!volumes.pod_dir("u1").exists());
    }

    #[test]
    fn a_missing_config_map_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = pod(json!([{"name": "cfg", "configMap": {"name": "absent"}}]));
        let err = Volumes::new(tmp.path()).prepare(&p, &MapObjects::default(), None).unwrap_err();
        assert_eq!(err.to_string(), "configmap \"absent\" not found");
        let optional = pod(json!([{"name": "cfg", "configMap": {"name": "absent", "optional": true}}]));
        Volumes::new(tmp.path()).prepare(&optional, &MapObjects::default(), None).unwrap();
    }

    #[test]
    fn downward_api_and_empty_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let p = pod(json!([
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}
            ]}},
            {"name": "scratch", "emptyDir": {}}
        ]));
        let prepared = Volumes::new(tmp.path()).prepare(&p, &MapObjects::default(), None).unwrap();
        let info = &prepared.paths["info"];
        assert_eq!(std::fs::read_to_string(info.join("labels")).unwrap(), "app=\"web\"");
        assert_eq!(std::fs::read_to_string(info.join("name")).unwrap(), "p");
        assert!(prepared.paths["scratch"].is_dir());
    }

    #[test]
    fn a_bound_claim_mounts_its_volumes_folder_made_on_first_use() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("local-path").join("pvc-1_ns_data");
        let objects = MapObjects::default();
        let claim = |volume: serde_json::Value| {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "data", "namespace": "ns"},
                "spec": {"volumeName": volume}}))
            .unwrap()
        };
        let p = pod(serde_json::json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]));
        let err = Volumes::new(tmp.path()).prepare(&p, &objects, None).unwrap_err();
        assert!(err.to_string().contains("persistentvolumeclaim \"data\" not found"), "{err}");
        objects.claims.lock().unwrap().insert("ns/data".into(), Arc::new(claim(serde_json::Value::Null)));
        let err = Volumes::new(tmp.path()).prepare(&p, &objects, None).unwrap_err();
        assert!(err.to_string().contains("is not bound yet"), "{err}");
        objects.claims.lock().unwrap().insert("ns/data".into(), Arc::new(claim("pvc-1".into())));
        let volume = serde_json::json!({"metadata": {"name": "pvc-1",
            "annotations": {PROVISIONED_BY_ANNOTATION: LOCAL_PATH_PROVISIONER}},
            "spec": {"local": {"path": folder}}});
        objects.volumes.lock().unwrap().insert("pvc-1".into(), Arc::new(serde_json::from_value(volume).unwrap()));
        let prepared = Volumes::new(tmp.path()).prepare(&p, &objects, None).unwrap();
        assert_eq!(prepared.paths["d"], folder);
        assert!(folder.is_dir());
    }

    #[test]
    fn volume_names_may_not_leave_the_pod_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        for name in [outside.to_str().unwrap(), "../../../../../outside", "..", ".", "a/b", ""] {
            let p = pod(json!([{"name": name, "emptyDir": {}}]));
            let err = Volumes::new(&tmp.path().join("root")).prepare(&p, &MapObjects::default(), None);
            assert!(err.is_err(), "volume name {name:?} was accepted");
        }
        assert!(!outside.exists(), "nothing was made outside the root");
    }

    #[test]
    fn file_paths_may_not_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let files = BTreeMap::from([("../evil".to_string(), b"x".to_vec())]);
        assert!(write_atomic(tmp.path(), &files, DEFAULT_MODE).is_err());
    }
}
