#!/usr/bin/env bash
# The whole test suite: installs what is missing, starts the services the tests
# need on loopback (one S3-compatible server per region, a RabbitMQ broker with
# one vhost and user per region, a PostgreSQL server), runs every test, and stops
# what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
# Dependencies: advisories, licences, duplicate crates and sources (deny.toml).
scripts/check-deps.sh
# The manual: mdBook builds docs/ and checks its links.
scripts/check-docs.sh
STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/locality-test.XXXXXX")
trap 'scripts/services-down.sh "$STATE_DIR"; rm -rf "$STATE_DIR"' EXIT
SERVICES=$(scripts/services-up.sh "$STATE_DIR")
eval "$SERVICES"
cargo test --workspace --all-targets "$@"
# The chaos run (cli/tests/chaos.rs; `test = false`, so only here): 300 jobs across
# faults, on the services above; fails on any lost, duplicate, stray or cross-region
# count.
scripts/chaos.sh --jobs 300
# The deployment files: Kubernetes overlays (schemas, region pinning, no secrets) and
# the Dockerfile; uses the binary the tests just built.
scripts/check-k8s.sh target/debug/locality
# The HTTP API against its OpenAPI description (schemathesis, bounded in time).
scripts/check-api.sh target/debug/locality
