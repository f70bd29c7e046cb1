#!/usr/bin/env bash
# Headless Chromium + chromedriver for the web demo's browser test (tests marked `browser`).
#
#   bash .ci/browser.sh        # installs Debian's chromium and chromium-driver unless both are already there
#
# Idempotent: a second call finds both binaries and returns at once. Needs root (or sudo) for apt-get.
set -euo pipefail
log() { echo "browser.sh: $*" >&2; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  log "chromium and chromedriver already installed"
  exit 0
fi

if [ "$(id -u)" = 0 ]; then
  as_root() { "$@"; }
else
  as_root() { sudo "$@"; }
fi

log "installing chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq chromium chromium-driver >&2
log "$(chromium --version) / $(chromedriver --version)"
