#!/usr/bin/env bash
# Start the Debian PostgreSQL cluster on 127.0.0.1 and create the test role and database.
# Idempotent: a cluster that is already up and listening is left alone (other processes may be
# using it), one that is down is started, a missing one is created. The role may create
# databases: the distributed tests run each on a fresh, empty database.
set -euo pipefail
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -q "^$ver main$"; then
  pg_createcluster "$ver" main >/dev/null
fi
pg_conftool "$ver" main set listen_addresses localhost
if pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
  pg_isready -q -h 127.0.0.1 || pg_ctlcluster "$ver" main restart  # up, but not on 127.0.0.1
else
  pg_ctlcluster "$ver" main start
fi
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
pg_isready -h 127.0.0.1
su postgres -c "psql -q -v ON_ERROR_STOP=1" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mergesearch') THEN
    CREATE ROLE mergesearch LOGIN PASSWORD 'mergesearch' CREATEDB;
  ELSE
    ALTER ROLE mergesearch LOGIN PASSWORD 'mergesearch' CREATEDB;
  END IF;
  -- a role whose password is a sentinel: tests grep every output for it (tests/hardening)
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mergesearch_sentinel') THEN
    CREATE ROLE mergesearch_sentinel LOGIN PASSWORD 'pw_SENTINEL_2f7c91d4e8' CREATEDB;
  ELSE
    ALTER ROLE mergesearch_sentinel LOGIN PASSWORD 'pw_SENTINEL_2f7c91d4e8' CREATEDB;
  END IF;
END $$;
SQL
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='mergesearch_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O mergesearch mergesearch_test"
