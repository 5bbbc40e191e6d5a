#!/usr/bin/env bash
# Debian packages the tests drive as real clients: dig (bind9-dnsutils) and curl.
set -euo pipefail
missing=()
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "system-deps: please install ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "system-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
