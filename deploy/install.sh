#!/usr/bin/env bash
# Installs skiff on a bare host, as systemd services, in one of two roles:
#
#   install.sh server --advertise-address IP
#       etcd, skiff-apiserver, -scheduler, -controller-manager, -dns and
#       -ingress; the cluster CA and every component's certificate under
#       /etc/skiff/pki; the administrator's config /etc/skiff/pki/admin.yaml.
#       Then, for each node to join:
#         skiffctl --kubeconfig /etc/skiff/pki/admin.yaml token create --print-join-command
#
#   install.sh node --server https://IP:6443 --token ID.SECRET --ca-cert-base64 B64
#       containerd, skiff-kubelet and skiff-overlay. The kubelet joins with
#       the bootstrap token: it makes its own keys and gets its certificates
#       signed by the server (nothing secret is copied from the server).
#
# Common options:
#   --bin-dir DIR     where the skiff binaries are (default: beside this
#                     script's checkout, target/release)
#   --root DIR        install under DIR instead of / (for a look, or tests);
#                     services are then not started
#   --node-name NAME  (node) default: this host's name
#   --node-ip IP      (node) default: the address of the default route
#   --registry-mirror URL  (node) where images named 127.0.0.1:5000/... are
#                     pulled from (default http://127.0.0.1:5000)
#
# Each service gets /etc/skiff/NAME.env (its flags, SKIFF_ARGS) and
# /etc/systemd/system/skiff-NAME.service (Restart=always). Where systemd
# runs (PID 1) and --root is /, the services are enabled and started.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }

(($#)) || usage
role=$1; shift
case $role in server | node) ;; -h | --help) usage ;; *) die "the role is server or node, not $role" ;; esac

root=/ bin_dir="$here/../target/release" advertise="" server="" token="" ca_b64="" node_name="" node_ip=""
mirror=http://127.0.0.1:5000
while (($#)); do
  case $1 in
    --root) root=$2 ;;
    --bin-dir) bin_dir=$2 ;;
    --advertise-address) advertise=$2 ;;
    --server) server=$2 ;;
    --token) token=$2 ;;
    --ca-cert-base64) ca_b64=$2 ;;
    --node-name) node_name=$2 ;;
    --node-ip) node_ip=$2 ;;
    --registry-mirror) mirror=$2 ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
  shift 2 || die "$1 needs a value"
done
root=${root%/}

# A missing prerequisite is named, with how to get it.
need_command() { command -v "$1" >/dev/null || die "$1 is missing: $2"; }
need_binary() { [ -x "$bin_dir/$1" ] || die "$bin_dir/$1 is missing: build it (cargo build --release --bins) or pass --bin-dir"; }

etc=$root/etc/skiff
pki=$etc/pki
units=$root/etc/systemd/system
bin=$root/usr/local/bin
state=$root/var/lib/skiff
mkdir -p "$etc" "$pki" "$units" "$bin" "$state"

install_binaries() {
  for b in "$@"; do
    need_binary "$b"
    install -m 0755 "$bin_dir/$b" "$bin/$b"
  done
}

# unit NAME DESCRIPTION EXEC [AFTER]: the service and its flags file. The
# unit names the installed paths (/usr/local/bin, /etc/skiff) as systemd
# will see them; the flags file holds what the install laid out.
unit() {
  local name=$1 description=$2 exec=$3 after=${4:-network-online.target}
  cat > "$units/skiff-$name.service" <<UNIT
[Unit]
Description=skiff: $description
Documentation=https://github.com/skiff/skiff
Wants=network-online.target
After=$after

[Service]
Type=simple
EnvironmentFile=/etc/skiff/$name.env
ExecStart=$exec \$SKIFF_ARGS
Restart=always
RestartSec=2
LimitNOFILE=1048576
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
}

# flags NAME ARGS...: /etc/skiff/NAME.env
flags() {
  local name=$1; shift
  printf 'SKIFF_ARGS="%s"\n' "$*" > "$etc/$name.env"
}

install_server() {
  [ -n "$advertise" ] || die "--advertise-address IP is needed: the address nodes reach this server at"
  need_command etcd "apt-get install etcd-server"
  install_binaries skiff-apiserver skiff-scheduler skiff-controller-manager skiff-dns skiff-ingress skiffctl
  install -m 0755 "$(command -v etcd)" "$bin/etcd"
  "$bin/skiffctl" certs --dir "$pki" --server "https://$advertise:6443" \
    --apiserver-names "$advertise,$(hostname)" >/dev/null
  mkdir -p "$state/etcd"
  flags etcd --name default --data-dir "$state/etcd" \
    --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --cert-file "$pki/etcd-server.crt" --key-file "$pki/etcd-server.key" \
    --trusted-ca-file "$pki/ca.crt" --client-cert-auth
  unit etcd "etcd, the store" /usr/local/bin/etcd
  flags apiserver --listen "$advertise:6443" --rest-listen "$advertise:6445" --metrics-listen 127.0.0.1:6444 \
    --etcd-endpoints https://127.0.0.1:2379 --etcd-cafile "$pki/ca.crt" \
    --etcd-certfile "$pki/apiserver-etcd-client.crt" --etcd-keyfile "$pki/apiserver-etcd-client.key" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --service-account-key-file "$pki/sa.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key"
  unit apiserver "the API server" /usr/local/bin/skiff-apiserver skiff-etcd.service
  flags scheduler --kubeconfig "$pki/skiff-scheduler.yaml" --metrics-listen 127.0.0.1:10259
  unit scheduler "the scheduler" /usr/local/bin/skiff-scheduler skiff-apiserver.service
  flags controller-manager --kubeconfig "$pki/skiff-controller-manager.yaml" --metrics-listen 127.0.0.1:10257 \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key"
  unit controller-manager "the controller manager" /usr/local/bin/skiff-controller-manager skiff-apiserver.service
  flags dns --kubeconfig "$pki/skiff-dns.yaml" --listen "$advertise:53" --metrics-listen 127.0.0.1:10254
  unit dns "cluster DNS" /usr/local/bin/skiff-dns skiff-apiserver.service
  flags ingress --kubeconfig "$pki/skiff-ingress.yaml" --metrics-listen 127.0.0.1:10258 \
    --http-listen "$advertise:80" --https-listen "$advertise:443" --publish-address "$advertise"
  unit ingress "the HTTP(S) ingress" /usr/local/bin/skiff-ingress skiff-apiserver.service
  services=(etcd apiserver scheduler controller-manager dns ingress)
}

install_node() {
  [ -n "$server" ] && [ -n "$token" ] && [ -n "$ca_b64" ] \
    || die "--server, --token and --ca-cert-base64 are needed: the server prints them (skiffctl token create --print-join-command)"
  need_command containerd "apt-get install containerd"
  need_command runc "apt-get install runc"
  [ -x /usr/lib/cni/bridge ] || die "the CNI plugins are missing: apt-get install containernetworking-plugins"
  need_command nft "apt-get install nftables"
  if ! ip link add skiff-wg-probe type wireguard 2>/dev/null; then
    need_command wireguard-go "this kernel has no WireGuard module: apt-get install wireguard-go"
  else
    ip link del skiff-wg-probe
  fi
  install_binaries skiff-kubelet skiff-overlay
  node_name=${node_name:-$(hostname)}
  node_ip=${node_ip:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')}
  [ -n "$node_ip" ] || die "no default route to take this node's address from: pass --node-ip"
  echo "$ca_b64" | base64 -d > "$pki/ca.crt" || die "--ca-cert-base64 is not base64"
  grep -q "BEGIN CERTIFICATE" "$pki/ca.crt" || die "--ca-cert-base64 holds no PEM certificate"
  # The token goes into a file only root reads.
  (umask 077 && printf 'server: %s\ncertificate-authority: %s\ntoken: %s\n' "$server" "$pki/ca.crt" "$token" > "$pki/bootstrap.yaml")

  # shellcheck source=lib/containerd.sh
  . "$here/lib/containerd.sh"
  local socket=$root/run/skiff/containerd.sock
  write_containerd_config "$etc/containerd/config.toml" "$state/containerd" "$root/run/skiff/containerd" \
    "$socket" "$state/cni/net.d" "$mirror"
  flags containerd --config "$etc/containerd/config.toml"
  unit containerd "containerd for skiff's pods" /usr/bin/containerd
  flags kubelet --node-name "$node_name" --node-ip "$node_ip" \
    --kubeconfig "$pki/kubelet.yaml" --bootstrap-kubeconfig "$pki/bootstrap.yaml" --cert-dir "$pki" \
    --container-runtime-endpoint "unix://$socket" --cni-conf-dir "$state/cni/net.d" \
    --cni-ipam-dir "$state/cni/ipam" --pod-log-dir "$root/var/log/pods" --root-dir "$state/kubelet" \
    --cluster-dns 10.43.0.10 --metrics-listen 127.0.0.1:10248
  unit kubelet "the node agent" /usr/local/bin/skiff-kubelet skiff-containerd.service
  # The overlay acts as this node, with the certificate the kubelet got.
  flags overlay --kubeconfig "$pki/kubelet.yaml" --node-name "$node_name" --state-dir "$state/overlay" \
    --metrics-listen 127.0.0.1:10256
  unit overlay "the pod network and Service rules" /usr/local/bin/skiff-overlay skiff-kubelet.service
  services=(containerd kubelet overlay)
}

"install_$role"

if [ "$root" = "" ] && [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
  systemctl daemon-reload
  for s in "${services[@]}"; do systemctl enable --now "skiff-$s.service"; done
  echo "started: ${services[*]/#/skiff-}"
else
  echo "installed under ${root:-/}: ${services[*]/#/skiff-} (not started: ${root:+--root given}${root:-systemd is not PID 1})"
fi
if [ "$role" = server ]; then
  echo "to join a node: skiffctl --kubeconfig /etc/skiff/pki/admin.yaml token create --print-join-command"
fi
