#!/usr/bin/env bash
# Installs sluice as a systemd service: builds the release binary, creates the
# `sluice` system user, installs the binary, a config (kept if present) and
# the unit, then enables and starts the service.
# Usage: sudo scripts/install.sh [--no-start]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

cargo build --release --locked
id -u sluice >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sluice
install -m 0755 target/release/sluice /usr/local/bin/sluice
install -d -m 0755 /etc/sluice
if [ ! -f /etc/sluice/sluice.toml ]; then
  install -m 0640 -g sluice config/sluice.toml /etc/sluice/sluice.toml
  echo "installed /etc/sluice/sluice.toml: edit keys and token_secret before exposing it"
fi
/usr/local/bin/sluice check-config /etc/sluice/sluice.toml
install -d -m 0755 /usr/share/doc/sluice
install -m 0644 README.md /usr/share/doc/sluice/README.md
install -m 0644 systemd/sluice.service /etc/systemd/system/sluice.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "${1:-}" != "--no-start" ]; then
    systemctl enable --now sluice
    systemctl --no-pager status sluice || true
  fi
else
  echo "systemd is not running here: installed files only"
fi
