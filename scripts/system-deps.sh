#!/usr/bin/env bash
# Debian packages the tests drive as real clients: dig (bind9-dnsutils), curl, Prometheus (its
# http_sd discovery against the daemon), Node.js with npm (the npm `consul` client), then the
# npm packages of tests/js from their lock file; the browser the dashboard's tests run in
# (chromium, driven through chromium-driver); PostgreSQL's server binaries (the failover test's
# primary and standby) and Unbound (the recursive resolver in front of the daemon's zone).
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
compgen -G '/usr/lib/postgresql/*/bin/pg_basebackup' >/dev/null || missing+=(postgresql)
command -v unbound >/dev/null || [ -x /usr/sbin/unbound ] || missing+=(unbound)
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
# Debian's prometheus, unbound and postgresql packages start their service where they can; the
# tests start their own. Only what was just installed is stopped (CI's PostgreSQL stays up).
for unit in prometheus unbound postgresql; do
  case " ${missing[*]} " in *" $unit "*) ;; *) continue ;; esac
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
    $SUDO systemctl stop "$unit" || true
  fi
done
npm_ci
