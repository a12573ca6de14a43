#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian packages, for the playground's browser test
# (tests/serve_app/test_playground.py runs this once when `chromium` is missing). Idempotent: does nothing
# when both binaries are already on PATH. Uses sudo only when not root. Needs apt access (Debian/Ubuntu).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_browser.sh: not root and no sudo: cannot apt-get install chromium" >&2; exit 1; }
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
command -v chromium >/dev/null && command -v chromedriver >/dev/null
