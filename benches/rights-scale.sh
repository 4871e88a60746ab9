#!/usr/bin/env bash
# Rights operations at scale (benches/rights_scale.py): erase, export and sweep a subject
# holding N objects on a real S3 server (s3s-fs, with benches/s3s-fs/ordered-listing.patch
# so that a page of a listing costs a page, as on S3) and on local disk; peak memory, objects/s
# and store requests per run, a JSON line at the end. Starts its own S3 server and
# RabbitMQ broker on loopback and stops them. Uses the release binary (built if missing).
#
# usage: benches/rights-scale.sh [--objects 20000,200000] [--stores disk,s3] [--operations export,erase,sweep]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
[ -x target/release/locality ] || cargo build --release -p locality
VENV=${LOCALITY_TEST_VENV:-$HOME/.cache/locality/test-venv}
# The test venv (scripts/s3-up.sh makes it); s3s-fs is installed by scripts/test.sh.
if [ ! -x "$VENV/bin/python" ]; then
  STATE=$(mktemp -d); scripts/s3-up.sh "$STATE" > /dev/null; scripts/services-down.sh "$STATE"; rm -rf "$STATE"
fi
S3S_ORDERED=${LOCALITY_BENCH_S3S_ROOT:-$HOME/.cache/locality/s3s-ordered}
benches/s3s-fs/install.sh "$S3S_ORDERED"
LOCALITY_BENCH_S3S_FS="$S3S_ORDERED/bin/s3s-fs" exec "$VENV/bin/python" benches/rights_scale.py "$@"
