# The cluster's image registry (Debian's docker-registry), holding the
# sample app's images as scripts/images built them (storage/), since no
# registry can be pulled from here. Serves plain HTTP on :5000.
FROM skiff-debian:bookworm
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends docker-registry busybox-static >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY storage/ /var/lib/docker-registry/
RUN mkdir -p /etc/docker/registry && printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\nhttp:\n  addr: :5000\n' \
      > /etc/docker/registry/config.yml
CMD ["docker-registry", "serve", "/etc/docker/registry/config.yml"]
