#!/bin/sh
# Prepare this machine for bench/run.py. Run as root from anywhere; idempotent.
#
#   - wrk and sysbench from Debian (apt-get update first), if missing;
#   - Datasette in its own venv, bench/.venv-datasette (the SQLite comparison);
#   - py-spy in the project venv (.venv), for bench/profile.sh;
#   - the bench user and database in MariaDB and PostgreSQL (setup_databases.sh);
#   - the 100,000-row items table in MariaDB, PostgreSQL and bench/data/items.db (gen_items.py).
#
# The table goes into its own database, patchbay_bench (owned by user bench), not into the
# shared database bench: the project's integration tests reload bench.items with 100 rows,
# which would turn most point lookups into empty answers in the middle of a benchmark.
#
# Needs MariaDB and PostgreSQL running on 127.0.0.1 (root without a password, postgres with
# local trust) and the mariadb and psql command-line clients. Environment overrides:
#   BENCH_DB=patchbay_bench     database that receives items (MariaDB and PostgreSQL)
#   PYTHON=python3              interpreter used for the Datasette venv and gen_items.py
#   PROJECT_VENV=.venv          the project's venv (py-spy goes there)
#   SKIP_DATASETTE=1 SKIP_PYSPY=1 SKIP_LOAD=1
set -eu

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
PYTHON=${PYTHON:-python3}
BENCH_DB=${BENCH_DB:-patchbay_bench}
case "$BENCH_DB" in *[!A-Za-z0-9_]*|"") echo "BENCH_DB: letters, digits and _ only" >&2; exit 2;; esac
PROJECT_VENV=${PROJECT_VENV:-$ROOT/.venv}

need_apt=""
command -v wrk >/dev/null 2>&1 || need_apt="$need_apt wrk"
command -v sysbench >/dev/null 2>&1 || need_apt="$need_apt sysbench"
if [ -n "$need_apt" ]; then
  echo "installing:$need_apt"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_apt >/dev/null
fi
wrk -v 2>&1 | head -n 1
sysbench --version

if [ "${SKIP_DATASETTE:-}" != 1 ]; then
  if [ ! -x "$BENCH/.venv-datasette/bin/datasette" ]; then
    "$PYTHON" -m venv "$BENCH/.venv-datasette"
    "$BENCH/.venv-datasette/bin/pip" install --quiet datasette
  fi
  "$BENCH/.venv-datasette/bin/datasette" --version
fi

if [ "${SKIP_PYSPY:-}" != 1 ]; then
  if [ -x "$PROJECT_VENV/bin/pip" ] && [ ! -x "$PROJECT_VENV/bin/py-spy" ]; then
    "$PROJECT_VENV/bin/pip" install --quiet py-spy
  fi
  if [ -x "$PROJECT_VENV/bin/py-spy" ]; then "$PROJECT_VENV/bin/py-spy" --version; fi
fi

if [ "${SKIP_LOAD:-}" != 1 ]; then
  sh "$BENCH/setup_databases.sh"
  mariadb -uroot <<SQL
CREATE DATABASE IF NOT EXISTS $BENCH_DB;
GRANT ALL PRIVILEGES ON $BENCH_DB.* TO 'bench'@'127.0.0.1';
GRANT ALL PRIVILEGES ON $BENCH_DB.* TO 'bench'@'localhost';
FLUSH PRIVILEGES;
SQL
  if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='$BENCH_DB'\"" | grep -q 1; then
    su postgres -c "createdb -O bench $BENCH_DB"
  fi
  mkdir -p "$BENCH/data"
  "$PYTHON" "$BENCH/gen_items.py" --sqlite "$BENCH/data/items.db" \
    --my-db "$BENCH_DB" --pg-db "$BENCH_DB"
fi
echo "ready: $PROJECT_VENV/bin/python bench/run.py --quick"
