#!/usr/bin/env bash
# Screenshot an HTML report with headless Chromium, offline: ci/screenshot_report.sh HTML PNG [WIDTH HEIGHT]
# The flags keep Chromium from reaching for the network (it stalls on a closed network without them); each run
# gets a fresh, empty profile. Exit 3 when no Chromium is installed (apt-get install chromium).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 HTML PNG [WIDTH HEIGHT]" >&2
    exit 2
fi
html=$(realpath "$1")
png=$(realpath -m "$2")
width=${3:-1280}
height=${4:-1600}
browser=${CHROMIUM:-}
if [[ -z "$browser" ]]; then
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null; then browser=$(command -v "$name"); break; fi
    done
fi
if [[ -z "$browser" ]]; then
    echo "no chromium binary found (tried chromium, chromium-browser, google-chrome; or set CHROMIUM)" >&2
    exit 3
fi
[[ -f "$html" ]] || { echo "no such file: $1" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$png"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --force-device-scale-factor=1 \
    --user-data-dir="$profile" --window-size="$width,$height" --screenshot="$png" "file://$html" \
    >"$profile/chromium.log" 2>&1 || { tail -5 "$profile/chromium.log" >&2; exit 1; }
[[ -s "$png" ]] || { echo "chromium wrote no screenshot" >&2; tail -5 "$profile/chromium.log" >&2; exit 1; }
