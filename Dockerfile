# syntax=docker/dockerfile:1
# Two images, both FROM scratch (no shell, no package manager), with the same files as those
# scripts/build-images.sh builds without Docker (the `rootfs` stage runs that script):
#
#   docker build -t ghcr.io/proxy-telemetry/proxy-telemetry:0.1.0 .
#       every subcommand (meter, inject-webhook, load, check, report, demo, fake-vendor,
#       fake-origin): the binary, its shared libraries, CA certificates; user 65532 (nonroot).
#   docker build --target init -t ghcr.io/proxy-telemetry/proxy-telemetry-init:0.1.0 .
#       the injected init container (init-iptables): the binary plus iptables (nf_tables and
#       legacy backends); root, with NET_ADMIN/NET_RAW granted by the pod.
#
# Scratch rather than distroless: distroless has no iptables, so the init image would need a
# Debian base with a shell and apt; assembling both from Debian 12 packages keeps them alike and
# lets the same script build them on machines without a Docker engine. Tags follow the version
# in Cargo.toml; the Helm chart's appVersion names the tag it expects. The release workflow
# (.github/workflows/release.yml) builds linux/amd64 and linux/arm64 with buildx: Rust
# cross-compiles on the build machine, only the `rootfs` stage runs on the target platform.

ARG RUST_VERSION=1.95

# The Rust toolchain on the build machine, with the target's C toolchain when cross-compiling
# (ring compiles C). Every build passes --target, so paths do not depend on the platform.
FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS toolchain
ARG TARGETARCH
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu gnu=x86-64-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    echo "$triple" >/rust-target; \
    if [ "$(dpkg --print-architecture)" != "$TARGETARCH" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "gcc-$gnu" "libc6-dev-$TARGETARCH-cross"; \
      rm -rf /var/lib/apt/lists/*; \
      rustup target add "$triple"; \
    fi
# Debian's gcc answers to its triplet name natively too, so these hold for native builds.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
WORKDIR /src

# The workspace reduced to what decides the dependencies: the manifests, Cargo.lock,
# .cargo/config.toml, and empty crate roots. Rebuilt on every source change, but its output only
# changes when a manifest does, so the `deps` layer below stays cached across source edits
# (cargo-chef's recipe, without cargo-chef). New crates need no change here.
FROM toolchain AS skeleton
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY crates crates
COPY src src
RUN find . -type f | while read -r f; do \
      case "$f" in \
        ./Cargo.toml|./Cargo.lock|./.cargo/*|./crates/*/Cargo.toml|*/build.rs) ;; \
        */src/main.rs) echo 'fn main() {}' >"$f" ;; \
        */src/lib.rs) : >"$f" ;; \
        *) rm -- "$f" ;; \
      esac; \
    done

# Every dependency compiled, in a layer of its own (`cache-to: mode=max` keeps it in CI).
FROM toolchain AS deps
COPY --from=skeleton /src ./
RUN cargo build --release --locked -p proxy-telemetry --target "$(cat /rust-target)"

FROM deps AS build
# Scanned for the SBOM too (buildx --sbom=true): Cargo.lock lists the crates in the binary.
ARG BUILDKIT_SBOM_SCAN_STAGE=true
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY crates crates
COPY src src
COPY examples examples
# The sources keep their checkout times, older than the skeleton's empty crates: touch them so
# cargo rebuilds the workspace's crates rather than linking the empty ones.
RUN find crates src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p proxy-telemetry --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/proxy-telemetry" /proxy-telemetry

# Both root filesystems, from Debian 12 packages of the target platform (scripts/build-images.sh
# --rootfs): the binary's libraries, CA certificates, iptables, passwd/group, status.d entries.
FROM docker.io/library/debian:bookworm-slim AS rootfs
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /proxy-telemetry /proxy-telemetry
COPY scripts/build-images.sh /usr/local/bin/build-images.sh
# --version also proves the binary is the real one, not the skeleton's.
RUN /proxy-telemetry --version \
 && build-images.sh --binary /proxy-telemetry --rootfs /rootfs

# The stages below are also what scripts/build-images.sh builds with podman or buildah (it reads
# them from this file): keep each one `FROM scratch AS <name>` with its root filesystem copied by
# `COPY --from=rootfs /rootfs/<name>/ /`.

# The injected init container: `init-iptables`, run once as root with NET_ADMIN and NET_RAW. It
# finds iptables-restore (nf_tables; iptables-legacy-restore with --iptables iptables-legacy)
# on PATH in /usr/sbin.
FROM scratch AS init
COPY --from=rootfs /rootfs/init/ /
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="proxy-telemetry-init" \
      org.opencontainers.image.description="The proxy-telemetry sidecar's init container: iptables redirect to the meter" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.source="https://github.com/proxy-telemetry/proxy-telemetry" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin:/usr/sbin
USER 0:0
ENTRYPOINT ["/usr/local/bin/proxy-telemetry"]
CMD ["init-iptables", "--help"]

# The meter and every other subcommand (the default target).
FROM scratch AS meter
COPY --from=rootfs /rootfs/meter/ /
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="proxy-telemetry" \
      org.opencontainers.image.description="Per-vendor proxy usage telemetry: metering proxy, sidecar injector, load generator" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.source="https://github.com/proxy-telemetry/proxy-telemetry" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 3128 9464
ENTRYPOINT ["/usr/local/bin/proxy-telemetry"]
CMD ["meter", "--config", "/etc/proxy-telemetry/meter.yaml"]
