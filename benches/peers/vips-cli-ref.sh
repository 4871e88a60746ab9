#!/usr/bin/env bash
# Reference timings with the vips command-line tools (Debian libvips-tools) on one JPEG,
# by default the largest photo in the corpus. Single-threaded (VIPS_CONCURRENCY=1).
#
# usage: vips-cli-ref.sh [JPEG] [RUNS]      (default: the largest-pixel-count photo, 7 runs)
# Prints one JSON line per step with the median, min and max of RUNS wall-clock times in ms.
# Each time includes the start-up of the vips process; the "startup" step measures that
# alone (vips avg on a 1x1 image), so subtract it for the pure work.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${1:-}
RUNS=${2:-7}
command -v vips >/dev/null || { echo "vips CLI missing: run setup.sh" >&2; exit 1; }
if [ -z "$SRC" ]; then
  best=0
  for f in "$HERE"/../../fixtures/photos/*.jp*g; do
    px=$(( $(vipsheader -f width "$f") * $(vipsheader -f height "$f") ))
    if [ "$px" -gt "$best" ]; then best=$px; SRC=$f; fi
  done
fi
export VIPS_CONCURRENCY=${VIPS_CONCURRENCY:-1}
T=$(mktemp -d "${TMPDIR:-/tmp}/vips-ref.XXXXXX")
trap 'rm -rf "$T"' EXIT

vips black "$T/one.v" 1 1
vipsthumbnail "$SRC" -s 1600 -o "$T/k1600.v"     # 1600px pixels, uncompressed, for encode-only
vips jpegsave "$T/k1600.v" "$T/k1600.jpg" --Q 82 --strip --optimize-coding

W=$(vipsheader -f width "$SRC"); H=$(vipsheader -f height "$SRC")
step() { # name command...
  local name=$1; shift
  local times=()
  "$@" >/dev/null 2>&1 # untimed warm-up
  for ((i = 0; i < RUNS; i++)); do
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | python3 -c '
import json, statistics, sys
v = [int(x) / 1000.0 for x in sys.stdin.read().split()]
print(json.dumps({"step": sys.argv[1], "src": sys.argv[2], "median_ms": round(statistics.median(v), 1),
                  "min_ms": round(min(v), 1), "max_ms": round(max(v), 1), "runs": len(v),
                  "vips_concurrency": sys.argv[3]}))' "$name" "$(basename "$SRC") ${W}x${H}" "$VIPS_CONCURRENCY"
}

step "startup (vips avg on 1x1)"                       vips avg "$T/one.v"
step "decode full-size (vips avg src.jpg)"             vips avg "$SRC"
step "decode shrink=2 (vips avg src.jpg[shrink=2])"    vips avg "$SRC[shrink=2]"
step "thumbnail 1600 end-to-end (vipsthumbnail, Q82 strip optimize-coding)" \
  vipsthumbnail "$SRC" -s 1600 -o "$T/out.jpg[Q=82,strip,optimize_coding]"
step "encode 1600px JPEG Q82 only (jpegsave from .v)"  vips jpegsave "$T/k1600.v" "$T/enc.jpg" --Q 82 --strip --optimize-coding
step "decode 1600px JPEG (vips avg 1600.jpg)"          vips avg "$T/k1600.jpg"
