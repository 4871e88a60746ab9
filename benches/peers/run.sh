#!/usr/bin/env bash
# Run every available peer on workload W1 (and W2) and print one JSON line per run.
#
# usage: run.sh [CORPUS] [THREADS] [REPS]
#   CORPUS   directory of JPEGs            (default: the repository's fixtures/photos)
#   THREADS  worker threads N; a list is ok ("1 2" or "1,2")   (default: 2)
#   REPS     passes over the corpus per run (default: 1)
#
# environment:
#   PEERS="sharp vips pillow"   which peers, in this order (rotated every round)
#   WORKLOADS="W1 W2"           which workloads
#   ROUNDS=1                    repeat the whole set this many times, alternating peers
#   EXTRA_PEERS="/path/to/bin"  more runners, e.g. the Rust benchmark: each is run as
#                               BIN CORPUS OUTDIR THREADS REPS --workload W and must
#                               print one JSON line like the peers do (see README.md)
#   RESULTS=file.jsonl          also append every JSON line to this file
#   OUT=dir                     scratch output dir (default: a fresh mktemp -d, removed at exit)
#   KEEP_OUT=1                  keep the outputs of the last run of each peer in $OUT
#   PEERS_HOME                  where setup.sh installed things (default ~/.cache/peers)
#
# Every run is wrapped by lib/measure.py, which sets peak_rss_mb from outside the
# runner (sum of RSS over the process tree, and wait4's ru_maxrss). Progress and
# skips go to stderr; stdout carries only JSON lines.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CORPUS=${1:-$HERE/../../fixtures/photos}
THREADS_LIST=${2:-2}
REPS=${3:-1}
THREADS_LIST=${THREADS_LIST//,/ }
PEERS=${PEERS:-sharp vips pillow}
WORKLOADS=${WORKLOADS:-W1 W2}
ROUNDS=${ROUNDS:-1}
EXTRA_PEERS=${EXTRA_PEERS:-}
export PEERS_HOME=${PEERS_HOME:-$HOME/.cache/peers}
PY="$PEERS_HOME/venv/bin/python"

[ -d "$CORPUS" ] || { echo "run.sh: no corpus dir $CORPUS" >&2; exit 2; }
CORPUS=$(cd "$CORPUS" && pwd)

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/peers-out.XXXXXX")
  [ -n "${KEEP_OUT:-}" ] || trap 'rm -rf "$OUT"' EXIT
fi

note() { printf '[run.sh] %s\n' "$*" >&2; }

# --- which peer can do what ------------------------------------------------------
declare -A CMD SUPPORTS
avail=()
for p in $PEERS; do
  case $p in
    sharp)
      if command -v node >/dev/null && [ -d "$PEERS_HOME/node/node_modules/sharp" ]; then
        CMD[sharp]="$HERE/w1-sharp.mjs"; SUPPORTS[sharp]="W1 W2"; avail+=(sharp)
      else note "skip sharp: not installed (run setup.sh)"; fi ;;
    vips)
      if [ -x "$PY" ] && "$PY" -c 'import pyvips' 2>/dev/null; then
        CMD[vips]="$HERE/w1-vips.py"; SUPPORTS[vips]="W1"; avail+=(vips)
        if "$PY" -c 'import pyvips; pyvips.Image.black(8,8,bands=3).heifsave_buffer(compression="av1", encoder="aom", Q=60)' 2>/dev/null; then
          SUPPORTS[vips]="W1 W2"
        else note "vips: heifsave has no AV1 (aom) encoder here: W2 skipped for vips"; fi
      else note "skip vips: pyvips not installed (run setup.sh)"; fi ;;
    pillow)
      if [ -x "$PY" ] && "$PY" -c 'import PIL' 2>/dev/null; then
        CMD[pillow]="$HERE/w1-pillow.py"; SUPPORTS[pillow]="W1"; avail+=(pillow)
        if "$PY" -c 'from PIL import _avif; assert _avif.encoder_codec_available("aom")' 2>/dev/null; then
          SUPPORTS[pillow]="W1 W2"
        else note "pillow: no AVIF/aom encoder in this Pillow build: W2 skipped for pillow"; fi
      else note "skip pillow: Pillow not installed (run setup.sh)"; fi ;;
    *) note "unknown peer $p (known: sharp vips pillow; use EXTRA_PEERS for others)" ;;
  esac
done
i=0
for bin in $EXTRA_PEERS; do
  i=$((i + 1)); name="extra$i"
  [ -x "$bin" ] || { note "skip $bin: not executable"; continue; }
  CMD[$name]="$bin"; SUPPORTS[$name]="W1 W2"; avail+=("$name")
done
[ "${#avail[@]}" -gt 0 ] || { note "no peer available"; exit 1; }
note "corpus $CORPUS ($(find "$CORPUS" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' \) | wc -l) JPEGs), threads [$THREADS_LIST], reps $REPS, rounds $ROUNDS, peers: ${avail[*]}"

# --- run ---------------------------------------------------------------------------
rc=0
for ((round = 0; round < ROUNDS; round++)); do
  # rotate the peer order every round so no peer always runs first/last
  n=${#avail[@]}; order=()
  for ((k = 0; k < n; k++)); do order+=("${avail[$(((k + round) % n))]}"); done
  for wl in $WORKLOADS; do
    for t in $THREADS_LIST; do
      for p in "${order[@]}"; do
        case " ${SUPPORTS[$p]} " in *" $wl "*) ;; *) continue ;; esac
        od="$OUT/$p-$wl-t$t"
        rm -rf "$od"
        note "round $((round + 1))/$ROUNDS $wl threads=$t $p"
        line=$("$HERE/lib/measure.py" -- "${CMD[$p]}" "$CORPUS" "$od" "$t" "$REPS" --workload "$wl") || rc=1
        printf '%s\n' "$line"
        [ -z "${RESULTS:-}" ] || printf '%s\n' "$line" >> "$RESULTS"
        [ -n "${KEEP_OUT:-}" ] || rm -rf "$od"
      done
    done
  done
done
exit $rc
