#!/usr/bin/env bash
# Starts Debian's PostgreSQL (installing it where missing; needs root) with a user kerasbn
# (password kerasbn) owning an empty database kerasbn_test, for tests/test_tune.py:
#   launch/postgres_for_tests.sh
#   KERASBN_TEST_POSTGRES=postgresql://kerasbn:kerasbn@localhost/kerasbn_test ./test.sh
# The same steps start a server for a shared study (docs/training.md, "Tuning").
set -euo pipefail
if ! command -v pg_ctlcluster > /dev/null || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
fi
read -r version cluster _ <<< "$(pg_lsclusters -h | head -1)"
pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
pg_lsclusters -h | grep -q online
as_postgres() { su postgres -c "$1"; }
as_postgres "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='kerasbn'\"" | grep -q 1 ||
  as_postgres "psql -qc \"CREATE USER kerasbn PASSWORD 'kerasbn'\""
as_postgres "dropdb --if-exists kerasbn_test"
as_postgres "createdb -O kerasbn kerasbn_test"
