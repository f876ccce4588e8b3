# One image for every subcommand (meter, load, check, demo, fake-vendor, fake-origin).
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

# distroless/cc: glibc and CA certificates, no shell, no package manager; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /proxy-telemetry /usr/local/bin/proxy-telemetry
USER 65532:65532
EXPOSE 3128 9464
ENTRYPOINT ["/usr/local/bin/proxy-telemetry"]
CMD ["meter", "--config", "/etc/proxy-telemetry/meter.yaml"]
