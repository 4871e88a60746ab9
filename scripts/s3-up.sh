#!/usr/bin/env bash
# Starts one S3-compatible server per region on loopback for the tests: moto's server
# (installed from PyPI into a venv if missing), one process per region, so each region
# has its own endpoint. Prints `export` lines for the tests; writes PIDs to $STATE_DIR.
#
# usage: eval "$(scripts/s3-up.sh STATE_DIR)"      (stop: scripts/services-down.sh STATE_DIR)
set -euo pipefail
STATE_DIR=${1:?usage: s3-up.sh STATE_DIR}
mkdir -p "$STATE_DIR"
VENV=${LOCALITY_TEST_VENV:-$HOME/.cache/locality/test-venv}
# The same venv holds pika, for the Python upload-pipeline example the tests run, and
# prometheus-client, whose parser the tests read every /metrics with.
if [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c 'import pika, prometheus_client' 2>/dev/null; then
  echo "[s3-up] installing moto[server], pika and prometheus-client into $VENV" >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.*' 'pika==1.*' 'prometheus-client==0.*' >&2
fi
# shellcheck source=scripts/free-port.sh
source "$(dirname "$0")/free-port.sh"
endpoints=()
for region in eu ca sg; do
  port=$(free_port)
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" > "$STATE_DIR/moto-$region.log" 2>&1 &
  echo $! > "$STATE_DIR/moto-$region.pid"
  endpoints+=("$region=http://127.0.0.1:$port")
done
for entry in "${endpoints[@]}"; do
  url=${entry#*=}
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$url/moto-api/" && break
    sleep 0.1
  done
  curl -sf -o /dev/null "$url/moto-api/" || { echo "[s3-up] $url did not come up" >&2; exit 1; }
done
echo "[s3-up] S3 endpoints: ${endpoints[*]}" >&2
echo "export LOCALITY_TEST_PYTHON='$VENV/bin/python'"
echo "export LOCALITY_TEST_S3_ENDPOINTS='$(IFS=,; echo "${endpoints[*]}")'"
