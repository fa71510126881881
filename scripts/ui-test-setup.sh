#!/usr/bin/env bash
# What the browser tests of the web UI (tests/web_ui.rs) need: Debian's chromium at /usr/bin/chromium, node and
# npm, and playwright-core as pinned by tests/ui/package-lock.json. Run by `make test` (through `make ui-setup`).
# Installs with apt-get only what is missing (needs root, as on CI); `npm ci` is skipped when node_modules already
# matches the lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ui-test-setup: missing ${missing[*]}; install them (apt-get install -y ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "ui-test-setup: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "ui-test-setup: node $(node --version) is too old for playwright-core; install node 20 or later" >&2
  exit 1
fi

# npm ci deletes and reinstalls node_modules: do it only when package-lock.json changed since the last install.
want=$(sha256sum tests/ui/package-lock.json | cut -d' ' -f1)
stamp=tests/ui/node_modules/.engram-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "ui-test-setup: npm ci in tests/ui"
  (cd tests/ui && npm ci --no-audit --no-fund)
  echo "$want" > "$stamp"
fi
