#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts the services the tests
# need on loopback (one S3-compatible server per region, a RabbitMQ broker with
# one vhost and user per region, a PostgreSQL server), runs every test, and stops
# what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/locality-test.XXXXXX")
trap 'scripts/services-down.sh "$STATE_DIR"; rm -rf "$STATE_DIR"' EXIT
# s3s-fs (persists to disk, checks credentials) for the test that stops and restarts
# an S3 server mid-run; the tests start it themselves.
S3S_ROOT=${LOCALITY_TEST_S3S_ROOT:-$HOME/.cache/locality/s3s}
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  echo "[test] cargo install s3s-fs into $S3S_ROOT (a few minutes, once)" >&2
  # Not linted: CI's clippy wrapper (see .ci/run) is for this workspace's crates.
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    cargo install s3s-fs@0.14.1 --features binary --locked --root "$S3S_ROOT" >&2
fi
export LOCALITY_TEST_S3S_FS="$S3S_ROOT/bin/s3s-fs"
eval "$(scripts/s3-up.sh "$STATE_DIR")"
eval "$(scripts/rabbitmq-up.sh "$STATE_DIR")"
eval "$(scripts/postgres-up.sh "$STATE_DIR")"
cargo test --workspace --all-targets "$@"
# The deployment files: Kubernetes overlays (schemas, region pinning, no secrets) and
# the Dockerfile; uses the binary the tests just built.
scripts/check-k8s.sh target/debug/locality
# The HTTP API against its OpenAPI description (schemathesis, bounded in time).
scripts/check-api.sh target/debug/locality
