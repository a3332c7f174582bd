#!/usr/bin/env bash
# Installs Debian's Chromium for the headless WebRTC test (tests/test_transports_webrtc.py) when it is missing.
# CI runs as root on a fresh machine; elsewhere run it with sudo once.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "setup_chromium.sh: chromium is missing; run: sudo apt-get update && sudo apt-get install -y chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
command -v chromium
