#!/usr/bin/env bash
# Starts every service the tests need on loopback, under STATE_DIR, and prints the
# `export` lines that tell the tests where they are: one S3-compatible server per
# region (moto), a RabbitMQ cluster, a PostgreSQL server, and the s3s-fs binary (for
# tests that stop and restart an S3 server; they start it themselves). Stop them with
# scripts/services-down.sh STATE_DIR.
#
#   eval "$(scripts/services-up.sh "$STATE_DIR")"
set -euo pipefail
cd "$(dirname "$0")/.."
STATE_DIR=${1:?usage: scripts/services-up.sh STATE_DIR}
S3S_ROOT=${LOCALITY_TEST_S3S_ROOT:-$HOME/.cache/locality/s3s}
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  echo "[services] cargo install s3s-fs into $S3S_ROOT (a few minutes, once)" >&2
  # Not linted: CI's clippy wrapper (see .ci/run) is for this workspace's crates.
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    cargo install s3s-fs@0.14.1 --features binary --locked --root "$S3S_ROOT" >&2
fi
echo "export LOCALITY_TEST_S3S_FS='$S3S_ROOT/bin/s3s-fs'"
scripts/s3-up.sh "$STATE_DIR"
scripts/rabbitmq-up.sh "$STATE_DIR"
scripts/postgres-up.sh "$STATE_DIR"
