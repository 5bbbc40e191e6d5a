#!/usr/bin/env bash
# Debian packages the tests drive as real clients: dig (bind9-dnsutils), curl, Prometheus (its
# http_sd discovery against the daemon), Node.js with npm (the npm `consul` client), then the
# npm packages of tests/js from their lock file; and the browser the dashboard's tests run in
# (chromium, driven through chromium-driver).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v dig >/dev/null || missing+=(bind9-dnsutils)
command -v curl >/dev/null || missing+=(curl)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
npm_ci() {
  if [ ! -d tests/js/node_modules/consul ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    echo "system-deps: npm ci in tests/js"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
if [ ${#missing[@]} -eq 0 ]; then npm_ci; exit 0; fi
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
# Debian's prometheus package starts its service where it can; the tests start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
fi
npm_ci
