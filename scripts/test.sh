#!/usr/bin/env bash
# Runs every test, after installing what the tests need that cargo does not
# fetch itself:
#   - Debian's chromium (tests/browser.rs drives the demo page in it),
#   - npm playwright-core, pinned in tests/browser/package-lock.json,
#   - Debian's prometheus (tests/metrics.rs runs its promtool on /metrics),
#   - Debian's systemd (tests check the unit with systemd-analyze),
#   - Debian's nats-server (tests/cluster.rs and tests/sources.rs run it).
# Installs with apt-get (as root, or through sudo) only what is missing.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test http).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The prometheus package enables its own server; only promtool is wanted.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  npm ci --silent --prefix tests/browser
fi

cargo test "$@"
