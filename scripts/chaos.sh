#!/usr/bin/env bash
# A chaos run with figures: N jobs over three regions through two schedulers, a worker
# per region, a three-node RabbitMQ cluster, an s3s-fs server per region and
# PostgreSQL, while a worker is SIGKILLed, the broker node leading a queue is stopped
# and started, a region's S3 server is stopped for 10 s, a scheduler is SIGKILLed and
# one worker's broker link is cut for 20 s (cli/tests/chaos.rs). Progress goes to
# stderr; the last line is one JSON object of the figures. Exits non-zero when any
# job is lost or duplicated, or any object is stray or in the wrong region.
#
#   scripts/chaos.sh --jobs 300
#
# It starts the services as scripts/test.sh does, unless the environment already names
# them (scripts/test.sh runs it that way, after the suite, on the suite's build).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=300
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --jobs=*) JOBS="${1#--jobs=}"; shift ;;
    *) echo "usage: scripts/chaos.sh [--jobs N]" >&2; exit 2 ;;
  esac
done
if [ -z "${LOCALITY_TEST_AMQP_PORTS:-}" ]; then
  scripts/build-deps.sh
  STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/locality-chaos.XXXXXX")
  trap 'scripts/services-down.sh "$STATE_DIR"; rm -rf "$STATE_DIR"' EXIT
  SERVICES=$(scripts/services-up.sh "$STATE_DIR")
  eval "$SERVICES"
fi
REPORT=$(mktemp "${TMPDIR:-/tmp}/locality-chaos-report.XXXXXX")
status=0
LOCALITY_CHAOS_JOBS="$JOBS" LOCALITY_CHAOS_REPORT="$REPORT" \
  cargo test -p locality --test chaos -- --nocapture --test-threads 1 >&2 || status=$?
if [ -s "$REPORT" ]; then
  tail -n 1 "$REPORT"
else
  echo '{"error": "the chaos run ended without figures; see its output above"}'
fi
rm -f "$REPORT"
exit "$status"
