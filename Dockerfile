# syntax=docker/dockerfile:1.7
# trackproxy container image.
#
#   docker build -t trackproxy .
#   docker run --rm -p 443:8443 -p 80:8080 \
#     -v "$PWD/trackproxy.toml:/etc/trackproxy/trackproxy.toml:ro" \
#     -v trackproxy-state:/var/lib/trackproxy \
#     -e TRACKPROXY_CONFIG=/etc/trackproxy/trackproxy.toml trackproxy
#
# Without a config file it runs the embedded default (self-signed certificate for localhost).
# The image listens on 8443 (HTTPS) and 8080 (HTTP) as a non-root user; map 443/80 to them.

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them (cache mounts keep the registry
# and the target directory between builds).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trackproxy \
    && install -D -m 0755 target/release/trackproxy /out/trackproxy

# glibc + CA roots + a non-root user, nothing else (no shell).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/trackproxy /usr/local/bin/trackproxy
COPY config/example.toml /etc/trackproxy/example.toml
ENV TRACKPROXY__SERVER__HTTPS_LISTEN=0.0.0.0:8443 \
    TRACKPROXY__SERVER__HTTP_LISTEN=0.0.0.0:8080 \
    TRACKPROXY__LOG__FORMAT=json
# ACME account key and certificates (set tls.acme.cache_dir = "/var/lib/trackproxy/acme").
VOLUME ["/var/lib/trackproxy"]
EXPOSE 8443 8080
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/trackproxy", "probe", "--path", "/healthz"]
ENTRYPOINT ["/usr/local/bin/trackproxy"]
CMD ["serve"]
