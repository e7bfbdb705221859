# skiff's control plane, one image: every service binary, skiffctl, and
# Debian's etcd, on nothing but the C library they link and busybox (for
# healthchecks and a shell to look around). The service is the command:
#   docker run skiff:latest skiff-apiserver --help
# Built by scripts/images, which puts the binaries in the context's bin/.
FROM skiff-debian:bookworm AS assemble
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends etcd-server etcd-client busybox-static ca-certificates >/dev/null
COPY bin/ /out/usr/local/bin/
# The shared libraries each binary names (ldd), and the loader; etcd is static.
RUN set -eu; cp /usr/bin/etcd /usr/bin/etcdctl /out/usr/local/bin/; \
    mkdir -p /out/bin /out/tmp /out/etc/ssl /var/lib/skiff; chmod 1777 /out/tmp; \
    cp /bin/busybox /out/bin/busybox; \
    for applet in sh ls cat sed grep wget nslookup ps kill sleep mkdir rm cp; do ln -s busybox /out/bin/$applet; done; \
    for f in /out/usr/local/bin/*; do ldd "$f" 2>/dev/null || true; done \
      | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u \
      | while read -r lib; do cp --parents -L "$lib" /out; done; \
    cp -rL /etc/ssl/certs /out/etc/ssl/certs; \
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > /out/etc/passwd; \
    printf 'root:x:0:\nnogroup:x:65534:\n' > /out/etc/group; \
    printf 'hosts: files dns\n' > /out/etc/nsswitch.conf

FROM scratch
COPY --from=assemble /out/ /
ENV PATH=/usr/local/bin:/bin
WORKDIR /var/lib/skiff
