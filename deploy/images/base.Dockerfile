# The base of skiff's control-plane images: nothing but the C library the
# binaries link (the libraries `ldd` names, and the loader), busybox (for
# healthchecks and a shell to look around) and CA certificates. Each
# service's image adds its binary (service.Dockerfile). Built by
# scripts/images, which puts every control-plane binary in bin/ so that
# the libraries of all of them are found.
FROM skiff-debian:bookworm AS assemble
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends busybox-static ca-certificates >/dev/null
COPY bin/ /tmp/bin/
RUN set -eu; mkdir -p /out/bin /out/tmp /out/etc/ssl /out/usr/local/bin /out/var/lib/skiff; chmod 1777 /out/tmp; \
    cp /bin/busybox /out/bin/busybox; \
    for applet in sh ls cat sed grep wget nslookup ps kill sleep mkdir rm cp; do ln -s busybox /out/bin/$applet; done; \
    for f in /tmp/bin/*; do ldd "$f" 2>/dev/null || true; done \
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
