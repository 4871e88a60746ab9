#!/usr/bin/env bash
# Starts a RabbitMQ cluster for the tests on loopback (Debian's rabbitmq-server, installed
# with apt-get if missing): LOCALITY_RABBITMQ_NODES nodes (default 3), each its own node
# name, ports and directories under STATE_DIR, joined into one cluster, so quorum queues
# keep a replica on every node and a test can stop one. Then creates the vhosts
# `scheduler`, `eu`, `ca`, `sg`, one user per vhost whose permissions cover only that
# vhost, and one broker user per demo tenant's upload pipeline (see
# scripts/rabbitmq-tenant-user.sh). Prints `export` lines for the tests: the first
# node's port and environment, and every node's.
#
# usage: eval "$(scripts/rabbitmq-up.sh STATE_DIR)"      (stop: scripts/services-down.sh STATE_DIR)
set -euo pipefail
STATE_DIR=${1:?usage: rabbitmq-up.sh STATE_DIR}
NODES=${LOCALITY_RABBITMQ_NODES:-3}
mkdir -p "$STATE_DIR/rabbitmq"
if ! command -v rabbitmq-server >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "[rabbitmq-up] apt-get install rabbitmq-server" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends rabbitmq-server >&2
fi
# shellcheck source=scripts/free-port.sh
source "$(dirname "$0")/free-port.sh"
# Debian's /usr/sbin wrappers switch to the rabbitmq user; run the real scripts as
# ourselves so the nodes use our directories and our Erlang cookie (one cookie: one
# cluster).
RMQ_BIN=/usr/lib/rabbitmq/bin
# The broker starts the Erlang port mapper (epmd) if none runs; then it is ours to stop.
epmd_was_running=$(pgrep -x epmd >/dev/null && echo yes || echo no)
ports=(); envs=(); names=()
start_node() {
  local n=$1 port base
  port=$(free_port)
  base="$STATE_DIR/rabbitmq/node$n"
  mkdir -p "$base"
  (
    export RABBITMQ_NODENAME="locality-test-$port@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$port
    # 22000-31999 less 12000: below the ephemeral range and apart from the other ports.
    export RABBITMQ_DIST_PORT=$((port - 12000))
    export RABBITMQ_MNESIA_BASE="$base/mnesia"
    export RABBITMQ_LOG_BASE="$base/log"
    export RABBITMQ_PID_FILE="$base/rabbitmq.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$base/rabbitmq"
    echo "[]." > "$RABBITMQ_ENABLED_PLUGINS_FILE"
    # max_message_size is limits.broker_max_message_bytes' default: the scheduler sizes
    # its read-ahead by it.
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\nmax_message_size = 33554432\n' "$port" > "$RABBITMQ_CONFIG_FILE.conf"
    # Keep the node's environment for rabbitmqctl calls by tests and by services-down.sh.
    env | grep '^RABBITMQ_' | sed 's/^/export /' > "$base/env.sh"
    echo "export PATH=$RMQ_BIN:\$PATH" >> "$base/env.sh"
    "$RMQ_BIN/rabbitmq-server" -detached >&2
  )
  ports+=("$port"); envs+=("$base/env.sh"); names+=("locality-test-$port@localhost")
}
for n in $(seq 1 "$NODES"); do start_node "$n"; done
for n in $(seq 1 "$NODES"); do
  i=$((n - 1))
  "$RMQ_BIN/rabbitmqctl" -n "${names[$i]}" wait --timeout 60 "$STATE_DIR/rabbitmq/node$n/rabbitmq.pid" >&2
  cat "$STATE_DIR/rabbitmq/node$n/rabbitmq.pid" > "$STATE_DIR/rabbitmq-$n.pid"
done
if [ "$epmd_was_running" = no ]; then
  # Stopped after the brokers (services-down.sh goes through PID files in name order).
  pgrep -x -n epmd > "$STATE_DIR/zz-epmd.pid" || true
fi
for n in $(seq 2 "$NODES"); do
  node=${names[$((n - 1))]}
  "$RMQ_BIN/rabbitmqctl" -q -n "$node" stop_app >&2
  "$RMQ_BIN/rabbitmqctl" -q -n "$node" join_cluster "${names[0]}" >&2
  "$RMQ_BIN/rabbitmqctl" -q -n "$node" start_app >&2
done
RABBITMQ_NODENAME=${names[0]}
port=${ports[0]}
ctl() { "$RMQ_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@" >&2; }
ctl add_user locality-admin admin-secret
ctl set_user_tags locality-admin administrator
for vhost in scheduler eu ca sg; do
  ctl add_vhost "$vhost"
  ctl add_user "locality-$vhost" "secret-$vhost"
  ctl set_permissions -p "$vhost" "locality-$vhost" '.*' '.*' '.*'
  ctl set_permissions -p "$vhost" locality-admin '.*' '.*' '.*'
done
for tenant in demo-eu demo-ca demo-sg; do
  "$(dirname "$0")/rabbitmq-tenant-user.sh" "$tenant" "pipeline-$tenant" scheduler \
    "$RMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" >&2
done
echo "[rabbitmq-up] $NODES-node cluster on 127.0.0.1 ports ${ports[*]}, vhosts scheduler eu ca sg" >&2
echo "export LOCALITY_TEST_AMQP_PORT=$port"
echo "export LOCALITY_TEST_RABBITMQ_ENV='${envs[0]}'"
echo "export LOCALITY_TEST_AMQP_PORTS='$(IFS=,; echo "${ports[*]}")'"
echo "export LOCALITY_TEST_RABBITMQ_ENVS='$(IFS=,; echo "${envs[*]}")'"
