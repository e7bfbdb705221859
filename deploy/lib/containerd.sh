# shellcheck shell=bash
# containerd's config for a skiff node, shared by the node image's
# entrypoint (deploy/images/skiff-node) and deploy/install.sh: what was seen
# to work on these machines (shared notes, runtime.md): runc with cgroupfs,
# restrict_oom_score_adj, no AppArmor; images named 127.0.0.1:5000/... are
# pulled from REGISTRY_MIRROR, so a one-machine cluster's manifests work
# unchanged.
#
# write_containerd_config CONFIG_FILE ROOT STATE SOCKET CNI_CONF_DIR REGISTRY_MIRROR
write_containerd_config() {
  local config=$1 root=$2 state=$3 socket=$4 cni_conf=$5 mirror=$6
  local certs_d
  certs_d=$(dirname "$config")/certs.d
  mkdir -p "$(dirname "$config")" "$certs_d/127.0.0.1:5000" "$root" "$state" "$(dirname "$socket")" "$cni_conf"
  cat > "$config" <<TOML
version = 2
root = "$root"
state = "$state"
[grpc]
  address = "$socket"
[ttrpc]
  address = "$socket.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:5000/pause:3.6"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$cni_conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$state/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$certs_d"
TOML
  cat > "$certs_d/127.0.0.1:5000/hosts.toml" <<TOML
server = "$mirror"
[host."$mirror"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
TOML
}
