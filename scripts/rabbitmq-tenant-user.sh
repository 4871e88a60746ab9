#!/usr/bin/env bash
# Creates (or updates) the broker user of one tenant's upload pipeline on the scheduler's
# vhost. The user may:
#   - publish to `locality.submit` with its own tenant as routing key, and nothing else;
#   - bind its own server-named queues (amq.gen-*) to `locality.results` with keys
#     `TENANT.*` only, and consume them;
#   - nothing on `locality.submit` (the queue of every tenant's submissions), nothing on
#     any other vhost.
# The scheduler takes a submission's tenant from the `user_id` property, which RabbitMQ
# checks against the connection's user; name the user in tenants.TENANT.broker_user when
# it is not the tenant id.
#
# usage: scripts/rabbitmq-tenant-user.sh TENANT PASSWORD VHOST [RABBITMQCTL [ARGS...]]
#   e.g. scripts/rabbitmq-tenant-user.sh acme "$(openssl rand -hex 24)" scheduler
set -euo pipefail
tenant=${1:?usage: rabbitmq-tenant-user.sh TENANT PASSWORD VHOST [RABBITMQCTL ARGS...]}
password=${2:?password}
vhost=${3:?vhost}
shift 3
[ "$#" -gt 0 ] || set -- rabbitmqctl
ctl() { "$@" >/dev/null; }
escaped=${tenant//./\\.}
if ! ctl "$@" -q authenticate_user "$tenant" "$password" 2>/dev/null; then
  ctl "$@" -q add_user "$tenant" "$password" 2>/dev/null || ctl "$@" -q change_password "$tenant" "$password"
fi
ctl "$@" -q set_permissions -p "$vhost" "$tenant" \
  '^amq\.gen-.*$' '^(locality\.submit|amq\.gen-.*)$' '^(locality\.results|amq\.gen-.*)$'
ctl "$@" -q set_topic_permissions -p "$vhost" "$tenant" locality.submit "^${escaped}\$" '^$'
ctl "$@" -q set_topic_permissions -p "$vhost" "$tenant" locality.results '^$' "^${escaped}\\.[^.#*]+\$|^${escaped}\\.\\*\$"
echo "[rabbitmq-tenant-user] $tenant on vhost $vhost: publishes $tenant to locality.submit, binds $tenant.* on locality.results"
