# trackproxy container image.
#
#   docker build -t trackproxy .
#   docker run --rm -p 443:8443 -p 80:8080 \
#     -v "$PWD/trackproxy.toml:/etc/trackproxy/trackproxy.toml:ro" \
#     -v trackproxy-state:/var/lib/trackproxy \
#     -e TRACKPROXY_CONFIG=/etc/trackproxy/trackproxy.toml trackproxy
#
# Without a config file it runs the embedded default (self-signed certificate for localhost).
# The image listens on 8443 (HTTPS) and 8080 (HTTP) as a non-root user (65532); map 443/80 to
# them. Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10).
#
# The base images are build arguments with the public images as defaults. On a machine without a
# registry, scripts/docker-build makes local stand-ins under the same names first (README,
# "Containers").

ARG RUST_VERSION=1.88
ARG BUILD_IMAGE=rust:${RUST_VERSION}-bookworm
# glibc + libgcc + CA roots + a non-root user, nothing else (no shell).
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
# Cache mounts keep cargo's registry and the target directory between builds, so a source change
# rebuilds only trackproxy itself. The line tables (release profile: debug = "line-tables-only")
# are stripped, the symbols kept: 53 → 14 MB, backtraces still name functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trackproxy \
    && install -d /out \
    && objcopy --strip-debug target/release/trackproxy /out/trackproxy \
    && install -d -m 0700 /out/state

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/trackproxy /usr/local/bin/trackproxy
COPY config/example.toml /etc/trackproxy/example.toml
# The state directory (ACME account key and certificates: tls.acme.cache_dir =
# "/var/lib/trackproxy/acme") exists in the image, owned by the user trackproxy runs as, so a new
# named volume mounted there starts with that owner and mode and is writable.
COPY --from=build --chown=65532:65532 /out/state /var/lib/trackproxy
ENV TRACKPROXY__SERVER__HTTPS_LISTEN=0.0.0.0:8443 \
    TRACKPROXY__SERVER__HTTP_LISTEN=0.0.0.0:8080 \
    TRACKPROXY__LOG__FORMAT=json
VOLUME ["/var/lib/trackproxy"]
EXPOSE 8443 8080
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/trackproxy", "probe", "--path", "/healthz"]
ENTRYPOINT ["/usr/local/bin/trackproxy"]
CMD ["serve"]
