#!/bin/sh
# Where the gateway's time goes: a Q2 (point lookup) MariaDB run at 64 connections, recorded
# with py-spy during the measured 10 s, then the top frames printed. Extra arguments go to
# run.py (e.g. --workers 2 --pool-size 32, --queries q3, --duration 20).
#
# The raw profile (collapsed stacks) and its summary land in bench/results/profile-*.txt; the run
# itself is appended to bench/results/<date>.jsonl with "profiled": true. py-spy pauses the
# process for each sample, so a profiled run is slower than an unprofiled one: compare
# throughput only between unprofiled runs.
set -eu
BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
PY=${PY:-$ROOT/.venv/bin/python}
if [ ! -x "$(dirname "$PY")/py-spy" ] && ! command -v py-spy >/dev/null 2>&1; then
  "$(dirname "$PY")/pip" install --quiet py-spy
fi
exec "$PY" "$BENCH/run.py" --backends mariadb --queries q2 --conns 64 --no-direct \
  --profile --label profile "$@"
