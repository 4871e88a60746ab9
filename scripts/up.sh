#!/usr/bin/env bash
# Quick start: build Locality and run `locality up` (scheduler + eu, ca, sg workers in
# one process, data under ./data/REGION). Extra arguments go to `locality up`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
exec cargo run --release -p locality -- up "$@"
