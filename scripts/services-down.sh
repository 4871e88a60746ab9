#!/usr/bin/env bash
# Stops the services a test run started (only those: by the PIDs it recorded).
set -uo pipefail
STATE_DIR=${1:?usage: services-down.sh STATE_DIR}
for pidfile in "$STATE_DIR"/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  case "$(basename "$pidfile")" in
    # PostgreSQL: SIGINT is its fast shutdown (SIGTERM would wait for clients).
    postgres.pid) kill -INT "$pid" 2>/dev/null || true ;;
    *) kill "$pid" 2>/dev/null || true ;;
  esac
  # Wait for it to be gone, so nothing of the run outlives the script.
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
done
