# Sourced by scripts/image.sh and by the Makefile (kube-up) and tests/test_containers.py for
# need_podman: which container engine builds, how podman is configured on this kind of machine,
# what is installed when missing, and the names of the stand-ins for images that cannot be pulled.
# shellcheck shell=bash

# podman and buildah read this instead of /etc (see the file).
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

# A Docker engine where one answers (this kind of machine may have the client only), else podman.
detect_engine() {
  if [ -n "${ENGINE:-}" ]; then
    return
  fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  else
    ENGINE=podman
  fi
}

# Installs with apt-get (sudo unless root) the package of each COMMAND=PACKAGE whose command
# is missing.
need() {
  local pair missing=() sudo=
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing ${missing[*]} (apt-get)" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# podman with runc (containers.conf) and a pod network with DNS (aardvark-dns).
need_podman() {
  need podman=podman runc=runc /usr/lib/podman/aardvark-dns=aardvark-dns
}

# localhost/standin-NAME:TAG: the local stand-in for the image NAME:TAG (any registry). Not
# localhost/standin/NAME: podman would take that for NAME when looking up the short name.
standin_of() {
  echo "localhost/standin-${1##*/}"
}

# IMAGE with its registry: Docker's for a short name, which podman otherwise resolves by
# asking or by matching any local image of that name (a stand-in included).
qualified() {
  local first=${1%%/*}
  if [[ $1 == */* && ($first == *.* || $first == *:* || $first == localhost) ]]; then
    echo "$1"
  elif [[ $1 == */* ]]; then
    echo "docker.io/$1"
  else
    echo "docker.io/library/$1"
  fi
}

has_image() { # ENGINE IMAGE
  "$1" image inspect "$(qualified "$2")" >/dev/null 2>&1
}
