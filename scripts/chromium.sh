#!/usr/bin/env bash
# Prints the path of a Chromium that runs headless (what tests/claims.rs opens report.html in).
# Installs Debian's `chromium` package when none is found — as root only; otherwise it says what to
# run and exits 2. Not version-pinned: Debian's mirrors keep only the current security build.
set -euo pipefail
for c in chromium chromium-browser google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; exit 0; fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "Chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null; }
command -v chromium
