#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each), from the seeds here
# and the repository's fixtures (photos and hostile files), keeping what each run
# finds in fuzz/corpus/TARGET (not committed). A crash stops the run and leaves its
# input in fuzz/artifacts/TARGET/: make it a fixture and a test, then fix it.
#
# usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET ...]
# needs: rustup's nightly toolchain and `cargo install cargo-fuzz --locked`
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(envelope config keys signed_message image)
mkdir -p corpus/image
cp -n ../fixtures/photos/* ../fixtures/bad/* corpus/image/
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  echo "[fuzz] $target for ${SECONDS_EACH}s" >&2
  # -rss_limit_mb: a decode that allocates past the limits is a finding, not a pass.
  cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1
done
