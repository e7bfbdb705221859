# One skiff control-plane service (or skiffctl, or etcd): the base and the
# binaries scripts/images put in this image's bin/. The command picks what
# runs: `docker run skiff-apiserver skiff-apiserver --help`.
ARG TAG=latest
FROM skiff-base:${TAG}
COPY bin/ /usr/local/bin/
