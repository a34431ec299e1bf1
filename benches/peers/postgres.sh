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
psql -q -v ON_ERROR_STOP=1 raw <<'SQL'
CREATE TABLE raw_events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream         text COLLATE "C" NOT NULL,
    category       text COLLATE "C" NOT NULL,
    revision       bigint NOT NULL,
    id             uuid NOT NULL UNIQUE,
    type           text COLLATE "C" NOT NULL,
    schema_version integer NOT NULL,
    data           text NOT NULL,
    metadata       text,
    recorded_at    timestamptz NOT NULL,
    UNIQUE (stream, revision)
);
CREATE INDEX ON raw_events (category, position);
CREATE INDEX ON raw_events (type, position);
CREATE TABLE ordered_events (LIKE raw_events INCLUDING INDEXES);
CREATE TABLE log_head (singleton boolean PRIMARY KEY DEFAULT true, position bigint NOT NULL);
INSERT INTO log_head VALUES (true, 0);
SQL

data='{"account_id":"acc-7-12345","amount":86415,"currency":"EUR","reference":"invoice 2026-11-27 / order 1234567890 / customer 42","note":"benchmark event with a realistic amount of payload text"}'
columns="stream, category, revision, id, type, schema_version, data, metadata, recorded_at"
values="'cat' || :c || '-' || :s, 'cat' || :c, r, gen_random_uuid(), 'Deposited', 1, '$data', NULL, now()"

# insert ROWS: one transaction of ROWS rows, positions from the identity column.
for rows in 1 10 30 100; do
    cat >"$scripts/insert-$rows.sql" <<SQL
\set c random(0, 299)
\set s random(1, 1000000000000)
INSERT INTO raw_events ($columns) SELECT $values FROM generate_series(0, $rows - 1) AS r;
SQL
    # The same rows, positioned under the log-head row lock, held to the commit.
    cat >"$scripts/ordered-$rows.sql" <<SQL
\set c random(0, 299)
\set s random(1, 1000000000000)
WITH head AS (UPDATE log_head SET position = position + $rows RETURNING position - $rows AS start)
INSERT INTO ordered_events (position, $columns)
SELECT head.start + r + 1, $values FROM head, generate_series(0, $rows - 1) AS r;
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
