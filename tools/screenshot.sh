#!/usr/bin/env bash
# Render an HTML file (e.g. results/report.html from `snakemake --report`) in headless Chromium
# and save a PNG screenshot, to check by eye that the report renders.
#   tools/screenshot.sh results/report.html results/report.png [WIDTHxHEIGHT]
# Needs Debian's chromium (apt-get install chromium); nothing is fetched from the network.
set -euo pipefail
html=$(realpath "$1")
out=$(realpath -m "$2")
size=${3:-1400,1000}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size="${size/x/,}" --virtual-time-budget=5000 \
  --screenshot="$out" "file://$html" 2>/dev/null
test -s "$out" && echo "screenshot: $out"
