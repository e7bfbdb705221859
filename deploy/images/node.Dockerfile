# A skiff node: containerd, runc, the CNI plugins, userspace WireGuard and
# nftables from Debian, with skiff-kubelet and skiff-overlay, started by
# skiff-node (deploy/images/skiff-node). Runs privileged.
FROM skiff-debian:bookworm
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins \
      wireguard-go wireguard-tools nftables iproute2 iptables ca-certificates util-linux procps >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY bin/ /usr/local/bin/
COPY skiff-node /usr/local/bin/skiff-node
COPY lib/containerd.sh /usr/local/lib/skiff/containerd.sh
ENTRYPOINT ["/usr/local/bin/skiff-node"]
