# syntax=docker/dockerfile:1
#
# One image, two binaries: the Nod server (the entrypoint) and the Kubernetes
# operator. Build with BuildKit (the cache mounts keep the crates registry and
# the target directory between builds; a cold build compiles RocksDB's C++
# and takes a while):
#
#   docker build -t ghcr.io/nod-io/nod:dev .
#
# Run a single member (the defaults listen on 127.0.0.1 only):
#
#   docker run --rm -p 2379:2379 ghcr.io/nod-io/nod:dev \
#     --listen-client-urls=http://0.0.0.0:2379 \
#     --advertise-client-urls=http://127.0.0.1:2379
#
# Run the operator from the same image by overriding the entrypoint (the Helm
# chart sets `command: ["/usr/local/bin/nod-operator"]`):
#
#   docker run --rm --entrypoint /usr/local/bin/nod-operator ghcr.io/nod-io/nod:dev crd
#
# The same image can be pushed as ghcr.io/nod-io/nod-operator too, the
# chart's default repository.

FROM rust:1-bookworm AS builder
# protoc: tonic/prost build scripts (the etcd v3 API and the peer protocol).
# libclang: the rocksdb crate generates its bindings with bindgen.
# Not pinned: bookworm's versions, which change only with point releases.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# No debug info in the image (the repository's release profile keeps some for
# profiling). The target directory is a cache mount, so the binaries are
# copied out in the same step.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin nod --bin nod-operator \
 && mkdir -p /out/bin /out/var/lib/nod \
 && cp target/release/nod target/release/nod-operator /out/bin/

# glibc, libgcc and libstdc++ (RocksDB is C++) of Debian 12, as the builder;
# no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/bin/nod /out/bin/nod-operator /usr/local/bin/
# Where data lives when no volume is mounted (the operator mounts the member's
# volume here and passes --data-dir=/var/lib/nod/data).
COPY --from=builder --chown=65532:65532 /out/var/lib/nod /var/lib/nod
WORKDIR /var/lib/nod
USER 65532:65532
# 2379 clients (etcd v3 API), 2380 peers, 2381 /metrics /healthz /readyz,
# 7946 gossip (UDP; TCP too for tools that expect it).
EXPOSE 2379 2380 2381 7946/udp 7946
ENTRYPOINT ["/usr/local/bin/nod"]
