# Used by scripts/docker-build only, on machines whose containers reach no crates registry: copies
# the crates fetched on the host (the build context: a cargo registry directory) into the BuildKit
# cache mount that the Dockerfile's `cargo build` reads. Builds nothing else.
ARG BUILD_IMAGE
FROM ${BUILD_IMAGE}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=bind,target=/seed \
    cp -a /seed/. /usr/local/cargo/registry/
