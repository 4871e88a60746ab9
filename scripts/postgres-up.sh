#!/usr/bin/env bash
# Starts a PostgreSQL server for the tests on loopback (Debian's postgresql, installed with
# apt-get if missing), in its own data directory under STATE_DIR, as an unprivileged user
# (`postgres` when run as root, else the caller). Prints `export` lines for the tests;
# writes the server's PID to STATE_DIR/postgres.pid (stopped by scripts/services-down.sh).
#
# usage: eval "$(scripts/postgres-up.sh STATE_DIR)"
set -euo pipefail
STATE_DIR=${1:?usage: postgres-up.sh STATE_DIR}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "[postgres-up] apt-get install postgresql" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
data="$STATE_DIR/postgres"
mkdir -p "$data"
# The server's user must be able to reach its directory (traverse only, no listing).
chmod o+x "$STATE_DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$data"
password=locality-test
pwfile="$data.pw"
echo "$password" > "$pwfile"
[ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
as_owner "$bindir/initdb" -D "$data" -U locality --auth=scram-sha-256 --pwfile="$pwfile" \
  --encoding=UTF8 --locale=C >&2
# shellcheck source=scripts/free-port.sh
source "$(dirname "$0")/free-port.sh"
port=$(free_port)
as_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off -c max_connections=200" start >&2
head -n 1 "$data/postmaster.pid" > "$STATE_DIR/postgres.pid"
echo "[postgres-up] PostgreSQL on 127.0.0.1:$port" >&2
echo "export LOCALITY_TEST_DATABASE_URL='postgres://locality:$password@127.0.0.1:$port/postgres'"
echo "export LOCALITY_TEST_PG_BIN='$bindir'"
