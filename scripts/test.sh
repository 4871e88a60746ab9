#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts the services the tests
# need on loopback (one S3-compatible server per region, a RabbitMQ broker with
# one vhost and user per region), runs every test, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/locality-test.XXXXXX")
trap 'scripts/services-down.sh "$STATE_DIR"; rm -rf "$STATE_DIR"' EXIT
eval "$(scripts/s3-up.sh "$STATE_DIR")"
eval "$(scripts/rabbitmq-up.sh "$STATE_DIR")"
cargo test --workspace --all-targets "$@"
