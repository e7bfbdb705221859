# Prometheus from Debian's package, for docker-compose.yml; its config is
# mounted from deploy/compose/prometheus.yml.
FROM skiff-debian:bookworm
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends prometheus busybox-static >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
ENTRYPOINT ["prometheus", "--storage.tsdb.path=/var/lib/prometheus", "--web.listen-address=:9090"]
CMD ["--config.file=/etc/prometheus/prometheus.yml"]
