#!/usr/bin/env bash
# Stops the services a test run started (only those: by the PIDs it recorded).
set -uo pipefail
STATE_DIR=${1:?usage: services-down.sh STATE_DIR}
for pidfile in "$STATE_DIR"/*.pid; do
  [ -e "$pidfile" ] || continue
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
done
