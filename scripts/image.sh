#!/usr/bin/env bash
# `make image`: the project's image, service-discovery:dev, built from the Dockerfile by the
# machine's engine: `docker build` where a Docker engine answers, else podman (installed with
# apt-get when missing). Where the Dockerfile's PYTHON_IMAGE or the dev overlay's PostgreSQL image
# can be neither found nor pulled, a local stand-in is built for it (scripts/standins/) and used
# instead: the Python one is passed as --build-arg PYTHON_IMAGE, so the Dockerfile stays the one
# users build. Stand-ins are kept by tag and rebuilt only when their recipe changes.
# The machine's pip configuration and CA bundle reach the RUN steps as build secrets, never a layer.
#   IMAGE=service-discovery:dev  ENGINE=docker|podman (default: detected)  TARGET=<a stage>
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/engine.sh
. scripts/engine.sh

IMAGE=${IMAGE:-service-discovery:dev}
STANDINS=scripts/standins
started=$SECONDS
log() { echo "image: $*" >&2; }

detect_engine
if [ "$ENGINE" = podman ]; then
  need_podman
fi
log "engine: $ENGINE"

# --- base images ---------------------------------------------------------------------------

# The first http(s) URI of the host's apt sources whose path ends in /$1 (debian,
# debian-security), else Debian's own: the stand-ins install from the mirror the host uses.
apt_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | grep -Eo '^[^#]*https?://[^ ]+' | grep -Eo 'https?://[^ ]+' \
    | grep -E "/$1/?\$" | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/$1}"
}

recipe_hash() { # what the recipe is made of, on stdin
  sha256sum | cut -c1-16
}

label_of() {
  "$ENGINE" image inspect --format '{{ index .Config.Labels "standin.recipe" }}' "$1" 2>/dev/null \
    || true
}

# Debian bookworm (slim), made with debootstrap: what the other stand-ins are built on.
debian_standin() {
  local tag=localhost/standin-debian:bookworm-slim mirror security hash rootfs
  mirror=$(apt_mirror debian)
  security=$(apt_mirror debian-security)
  hash=$( { cat "$STANDINS/debian.sh"; echo "$mirror $security"; } | recipe_hash)
  if [ "$(label_of "$tag")" = "$hash" ]; then
    echo "$tag"
    return
  fi
  need debootstrap=debootstrap
  log "building $tag with debootstrap from $mirror (about 2 minutes)"
  rootfs=$(mktemp -d /var/tmp/standin-debian.XXXXXX)
  # debootstrap needs root: sudo where this is not root (as system-deps.sh does)
  local sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo bash "$STANDINS/debian.sh" "$rootfs/root" "$mirror" "$security"
  $sudo tar -C "$rootfs/root" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL standin.recipe=$hash" \
    --change "LABEL standin.for=debian:bookworm-slim" \
    - "$tag" >/dev/null
  $sudo rm -rf "$rootfs"
  echo "$tag"
}

# The stand-in for IMAGE built from CONTAINERFILE (and the files next to it) on the Debian one.
standin() { # IMAGE CONTAINERFILE
  local image=$1 containerfile=$2 tag debian hash
  tag=$(standin_of "$image")
  debian=$(debian_standin)
  hash=$( { cat "$STANDINS"/*"${containerfile%%.*}"*; label_of "$debian"; } | recipe_hash)
  if [ "$(label_of "$tag")" = "$hash" ]; then
    log "stand-in for $image: $tag (cached)"
    echo "$tag"
    return
  fi
  log "building $tag, a stand-in for $image ($STANDINS/$containerfile)"
  "$ENGINE" build --quiet --tag "$tag" --build-arg "DEBIAN_IMAGE=$debian" \
    --label "standin.recipe=$hash" \
    --label "standin.for=$image" \
    --file "$STANDINS/$containerfile" "$STANDINS" >/dev/null
  echo "$tag"
}

# IMAGE itself (by its full name) where the engine has it or can pull it, else its stand-in.
base_image() { # IMAGE CONTAINERFILE PATTERN
  local image=$1 ref
  ref=$(qualified "$image")
  if has_image "$ENGINE" "$image"; then
    echo "$ref"
    return
  fi
  if timeout 120 "$ENGINE" pull --quiet "$ref" >/dev/null 2>&1; then
    log "pulled $ref"
    echo "$ref"
    return
  fi
  # A stand-in is Debian bookworm's package of the same major version, nothing else.
  # shellcheck disable=SC2053 # $3 is a glob
  if [[ ${image##*/} != $3 ]]; then
    log "cannot pull $image and have no stand-in for it (only for $3)"
    exit 1
  fi
  log "cannot pull $ref: using a local stand-in"
  standin "$image" "$2"
}

python_image=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
postgres_image=$(sed -n 's/^ *image: *\(postgres:[^ ]*\)$/\1/p' k8s/postgres/postgres-deployment.yaml)
python_base=$(base_image "$python_image" python.Containerfile 'python:3.11*-bookworm')
postgres_base=$(base_image "$postgres_image" postgres.Containerfile 'postgres:15*')

# --- the pip configuration of the RUN steps --------------------------------------------------

secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT

# The machine's pip settings (its files and PIP_* variables, as `pip config list` shows them)
# with `cert` pointing at the CA bundle secret as the Dockerfile mounts it; values naming paths of
# this machine (local indexes, constraint files, other certificates) are left out: they do not
# exist in the build.
host_pip=()
if [ -x .venv/bin/pip ]; then
  host_pip=(.venv/bin/pip)
elif python3 -m pip --version >/dev/null 2>&1; then
  host_pip=(python3 -m pip)
fi
pip_listing=
if ((${#host_pip[@]})); then
  pip_listing=$("${host_pip[@]}" config list 2>/dev/null || true)
fi
ca_bundle=$(SD_PIP_CONFIG_LIST=$pip_listing python3 - "$secrets/pip.conf" <<'PY'
import os, re, sys

settings: dict[tuple[str, str], str] = {}
for line in os.environ["SD_PIP_CONFIG_LIST"].splitlines():
    match = re.fullmatch(r"([^.]*)\.([^=]+)='(.*)'", line)
    if match:  # environment variables come last and win, as they do for pip
        section = "global" if match[1] == ":env:" else match[1]
        settings[section, match[2]] = match[3]
cert = settings.pop(("global", "cert"), None)
for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
    cert = cert or os.environ.get(name)
cert = cert or "/etc/ssl/certs/ca-certificates.crt"
kept, left_out = {}, []
for (section, key), value in settings.items():
    words = [w for w in value.split() if not w.startswith(("/", "file:", "~"))]
    if words or not value.split():
        kept.setdefault(section, {})[key] = " ".join(words)
    else:
        left_out.append(key)
kept.setdefault("global", {})["cert"] = "/run/secrets/ca-bundle"
with open(sys.argv[1], "w") as out:
    for section, values in kept.items():
        print(f"[{section}]", *(f"{k} = {v}" for k, v in values.items()), sep="\n", file=out)
shown = ", ".join(f"{k}={v}" for values in kept.values() for k, v in values.items())
note = f"; left out (paths of this machine): {', '.join(sorted(left_out))}" if left_out else ""
print(f"image: pip in RUN steps: {shown} (CA bundle {cert}){note}", file=sys.stderr)
print(cert)
PY
)

# --- the build -------------------------------------------------------------------------------

log "building $IMAGE with PYTHON_IMAGE=$python_base"
build_started=$SECONDS
if [ "$ENGINE" = docker ]; then
  export DOCKER_BUILDKIT=1
fi
"$ENGINE" build --tag "$IMAGE" ${TARGET:+--target "$TARGET"} \
  --build-arg "PYTHON_IMAGE=$python_base" \
  --secret "id=pip.conf,src=$secrets/pip.conf" --secret "id=ca-bundle,src=$ca_bundle" \
  --file Dockerfile .
log "built $IMAGE in $((SECONDS - build_started)) s ($((SECONDS - started)) s with the base images);" \
  "PostgreSQL for the dev overlay: $postgres_base"
"$ENGINE" image ls "$IMAGE" >&2
