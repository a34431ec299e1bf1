#!/usr/bin/env bash
# Message DB: its SQL, from the npm package @eventide/message-db, installed into the
# throwaway cluster; pgbench drives `write_message` at the same client counts, across a few
# hundred categories, and within one category (where Message DB serialises writers).
#
# Needs a running cluster (PGHOST, PGPORT, PGUSER), RESULTS, DURATION, WARMUP, CLIENTS, BATCHES.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/cluster.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm install --silent --no-audit --no-fund @eventide/message-db >/dev/null)
package=$work/node_modules/@eventide/message-db
echo "Message DB $(cat "$package/database/VERSION.txt")" >&2
DATABASE_NAME=message_store "$package/database/install.sh" >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; exit 1; }
# Message DB's functions call each other unqualified; its own role sets this search path.
export PGOPTIONS="-c search_path=message_store,public"

data=$RAW_DATA
write() { # STREAM-EXPRESSION ROWS
    cat <<SQL
\set c random(0, 299)
\set s random(1, 1000000000000)
SELECT message_store.write_message(gen_random_uuid()::varchar, $1, 'Deposited', '$data'::jsonb)
FROM generate_series(1, $2);
SQL
}
for batch in $BATCHES; do
    write "'cat' || :c || '-' || :s" "$batch" >"$work/across-$batch.sql"
    for clients in $CLIENTS; do
        pgbench_run message-db appends "$clients" "$batch" message_store "$work/across-$batch.sql"
    done
done
write "'account-' || :s" 1 >"$work/one-category.sql"
for clients in $CLIENTS; do
    pgbench_run message-db-one-category appends "$clients" 1 message_store "$work/one-category.sql"
done
