#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts the services the tests
# need on loopback, runs every test, stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
cargo test --workspace --all-targets "$@"
