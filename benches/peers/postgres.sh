#!/usr/bin/env bash
# Raw PostgreSQL: the database's own limit with no server in front. pgbench inserts rows of
# the store's `events` shape (about 200 bytes of JSON each) in single-row, 10-row and
# 100-row transactions at the same client counts as the store's `appends` scenario.
#
# Then the price of the ordering guarantee: the same inserts with positions assigned under
# the log-head row lock (as the store does) and without it (an identity column).
#
# Needs a running cluster (PGHOST, PGPORT, PGUSER), RESULTS, DURATION, WARMUP, CLIENTS, BATCHES.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/cluster.sh"

scripts=$(mktemp -d)
trap 'rm -rf "$scripts"' EXIT
createdb raw
psql -q -v ON_ERROR_STOP=1 -f "$here/raw-events.sql" raw
psql -q -v ON_ERROR_STOP=1 raw <<'SQL'
CREATE TABLE ordered_events (LIKE raw_events INCLUDING INDEXES);
CREATE TABLE log_head (singleton boolean PRIMARY KEY DEFAULT true, position bigint NOT NULL);
INSERT INTO log_head VALUES (true, 0);
SQL

for rows in 1 10 30 100; do
    raw_insert_script "$rows" "$scripts/insert-$rows.sql"
    # The same rows, positioned under the log-head row lock, held to the commit.
    cat >"$scripts/ordered-$rows.sql" <<SQL
\set c random(0, 299)
\set s random(1, 1000000000000)
WITH head AS (UPDATE log_head SET position = position + $rows RETURNING position - $rows AS start)
INSERT INTO ordered_events (position, $RAW_COLUMNS)
SELECT head.start + r + 1, $RAW_VALUES FROM head, generate_series(0, $rows - 1) AS r;
SQL
done

for batch in $BATCHES; do
    for clients in $CLIENTS; do
        pgbench_run postgres-raw appends "$clients" "$batch" raw "$scripts/insert-$batch.sql"
    done
done

# One writer committing group-commit-sized batches (the store's shape), two writers (two
# instances), and 64 writers of single rows (one transaction per request).
for shape in "1 30" "2 30" "64 1"; do
    set -- $shape
    for ordered in true false; do
        script=$scripts/insert-$2.sql
        [ "$ordered" = true ] && script=$scripts/ordered-$2.sql
        pgbench_run postgres-raw ordering "$1" "$2" raw "$script" "{\"ordered\": $ordered}"
    done
done
