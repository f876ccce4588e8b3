# One image for every subcommand (meter, load, check, demo, inject-webhook, fake-vendor,
# fake-origin); the last stage is the default target. The `init` stage adds iptables for the
# injected init container.
#   docker build -t ghcr.io/proxy-telemetry/proxy-telemetry:0.1.0 .
# Tags follow the version in Cargo.toml; the Helm chart's appVersion names the tag it expects.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY src src
COPY examples examples
RUN cargo build --release --locked --bin proxy-telemetry \
 && cp target/release/proxy-telemetry /proxy-telemetry

# The injected init container (`init-iptables`): the same binary plus iptables, run once as root
# with NET_ADMIN/NET_RAW only. Build it with --target init:
#   docker build --target init -t ghcr.io/proxy-telemetry/proxy-telemetry-init:0.1.0 .
FROM docker.io/library/debian:bookworm-slim AS init
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /proxy-telemetry /usr/local/bin/proxy-telemetry
ENTRYPOINT ["/usr/local/bin/proxy-telemetry"]
CMD ["init-iptables", "--help"]

# distroless/cc: glibc and CA certificates, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /proxy-telemetry /usr/local/bin/proxy-telemetry
USER 65532:65532
EXPOSE 3128 9464
ENTRYPOINT ["/usr/local/bin/proxy-telemetry"]
CMD ["meter", "--config", "/etc/proxy-telemetry/meter.yaml"]
