#!/usr/bin/env bash
# The review report's screenshot in the README and the book: `bcfeat classify --report` on one
# shared site with the study's model file, then headless Chromium (Debian) photographs the page.
#
#   scripts/review_report_screenshot.sh [MODEL] [FOLDER] [OUT.png]
#
# Defaults: artifacts/cpu/crosslab_model.pt, the CellaVision site of the shared data, and
# book/images/review_report.png. Nothing is fetched; the report itself is left in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-artifacts/cpu/crosslab_model.pt}"
folder="${2:-${BCFEAT_DATA_ROOT:-../shared/datasets}/cellavision_zheng18}"
out="${3:-book/images/review_report.png}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
.venv/bin/bcfeat classify "$model" "$folder" --output "$tmp/predictions.csv" --report "$tmp/report.html"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --hide-scrollbars --window-size=1280,1100 --screenshot="$tmp/shot.png" "file://$tmp/report.html" 2>/dev/null
mkdir -p "$(dirname "$out")"
mv "$tmp/shot.png" "$out"
echo "screenshot of $folder's review report -> $out"
