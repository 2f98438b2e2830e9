# shellcheck shell=bash
# Shared by scripts/docker-build and scripts/docker-standins (sourced, not run).

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""

apt_update_once() {
  [ -n "$apt_updated" ] || $SUDO apt-get update -qq
  apt_updated=1
}

# ensure_debian_tools PROGRAM:PACKAGE...: installs the packages of the programs missing here.
ensure_debian_tools() {
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# apt_download PACKAGE...: the .deb files of Debian's packages into the current directory.
apt_download() {
  apt-get download -qq -o APT::Sandbox::User=root "$@" 2>/dev/null || {
    apt_update_once
    apt-get download -qq -o APT::Sandbox::User=root "$@"
  }
}

# A Docker engine must answer: without one the container tests cannot run, and that is a failure.
need_docker_engine() {
  if ! command -v docker >/dev/null 2>&1; then
    echo "error: no docker command; the container image and its tests need a Docker engine" \
      "(Debian: apt-get install docker.io, then start dockerd)" >&2
    exit 1
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "error: no Docker engine answers ('docker info' fails); the container image and its" \
      "tests need a running engine (start dockerd, or check the permissions on /var/run/docker.sock)" >&2
    exit 1
  fi
}

# A docker command that builds with BuildKit (the Dockerfile uses RUN --mount): the default one
# when it has the buildx plugin (Docker 23 and later), else one of Docker 20.10's clients, which
# have BuildKit built in (DOCKER_BUILDKIT=1).
buildkit_docker() {
  local d major
  if docker buildx version >/dev/null 2>&1; then
    echo docker
    return
  fi
  for d in $(type -ap docker) /usr/bin/docker; do
    [ -x "$d" ] || continue
    major=$("$d" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then
      echo "$d"
      return
    fi
  done
  echo "error: no docker client here builds with BuildKit: install the buildx plugin" \
    "(Debian: docker-buildx) or Debian's docker.io client" >&2
  return 1
}

# dockerfile_default NAME: the default value of `ARG NAME=…` in ./Dockerfile.
dockerfile_default() {
  sed -n "s/^ARG $1=//p" Dockerfile | head -n1
}

# The machine's Rust toolchain as X.Y, the tag the build stage's stand-in gets.
local_rust_version() {
  rustc --version | sed -E 's/^rustc ([0-9]+\.[0-9]+).*/\1/'
}

# The build stage's base image for RUST_VERSION=$1, as the Dockerfile names it.
build_image_for() {
  dockerfile_default BUILD_IMAGE | sed "s/\${RUST_VERSION}/$1/"
}
