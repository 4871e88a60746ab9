#!/usr/bin/env bash
# Checks docs/openapi.yaml against a running `locality up` with schemathesis, every
# check on: generated requests for every operation; every answer must be documented
# (status, content type, headers, schema) and never a 5xx, schema-valid requests must
# be accepted and invalid ones refused (scripts/schemathesis.toml names the two
# operations whose validity JSON Schema cannot express). Bounded: it stops after LOCALITY_API_CHECK_SECONDS
# (default 90). Installs schemathesis into the tools venv if missing.
#
# usage: scripts/check-api.sh [PATH_TO_LOCALITY_BINARY]   (default target/debug/locality)
set -euo pipefail
cd "$(dirname "$0")/.."
LOCALITY_BIN=${1:-target/debug/locality}
VENV=${LOCALITY_TOOLS_VENV:-$HOME/.cache/locality/tools-venv}
if [ ! -x "$VENV/bin/st" ]; then
  echo "[check-api] installing schemathesis into $VENV" >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.*' >&2
fi
REPO=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/locality-api.XXXXXX")
"$LOCALITY_BIN" up --listen 127.0.0.1:0 --data-dir "$WORK/data" > "$WORK/stdout" 2> "$WORK/log" &
UP_PID=$!
trap 'kill "$UP_PID" 2>/dev/null; wait "$UP_PID" 2>/dev/null; rm -rf "$WORK"' EXIT
URL=""
for _ in $(seq 1 100); do
  URL=$(sed -n 's/^locality up: listening on \(http:[^ ,]*\).*/\1/p' "$WORK/stdout")
  [ -n "$URL" ] && break
  kill -0 "$UP_PID" 2>/dev/null || { cat "$WORK/log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "[check-api] locality up never listened" >&2; exit 1; }
echo "[check-api] schemathesis against $URL" >&2
# Its cache and reports go to the scratch directory, not the repository. One worker:
# schemathesis' workers are threads, and CPython 3.11's ast.parse (which hypothesis
# calls to describe its strategies) is not thread-safe there: two at once fail with
# "AST constructor recursion depth mismatch" (CPython gh-106905).
(cd "$WORK" && "$VENV/bin/st" --config-file "$REPO/scripts/schemathesis.toml" run "$REPO/docs/openapi.yaml" --url "$URL" \
  -H 'Authorization: Bearer demo-eu-key' \
  --checks all \
  --phases examples,coverage,fuzzing --max-examples 30 --workers 1 \
  --max-time "${LOCALITY_API_CHECK_SECONDS:-90}")
