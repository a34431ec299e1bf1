# Sourced by benches/compare and the peer scripts: a throwaway PostgreSQL cluster with its
# default durable settings (fsync on, synchronous_commit on), on a free loopback port.
# Sets PGHOST, PGPORT and PGUSER for psql, createdb and pgbench.

pg_bin() {
    # Resolved: a link to initdb alone (as in /usr/local/bin) lacks pg_basebackup.
    if command -v initdb >/dev/null; then dirname "$(readlink -f "$(command -v initdb)")"; return; fi
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$bin" ] || { echo "PostgreSQL's server programs are missing: apt-get install -y postgresql" >&2; return 1; }
    echo "$bin"
}

# Runs a cluster program, as `postgres` when we are root (initdb refuses root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# About 200 bytes of JSON: the raw baselines' event data, as the load generator's.
RAW_DATA='{"account_id":"acc-7-12345","amount":86415,"currency":"EUR","reference":"invoice 2026-11-27 / order 1234567890 / customer 42","note":"benchmark event with a realistic amount of payload text"}'

RAW_COLUMNS="stream, category, revision, id, type, schema_version, data, metadata, recorded_at"
# Row `r` of a stream in one of 300 categories, for pgbench (`:c`, `:s` set by the script).
RAW_VALUES="'cat' || :c || '-' || :s, 'cat' || :c, r, gen_random_uuid(), 'Deposited', 1, '$RAW_DATA', NULL, now()"

# raw_insert_script ROWS FILE: a pgbench script of one transaction of ROWS rows into
# raw_events (positions from its identity column).
raw_insert_script() {
    cat >"$2" <<SQL
\set c random(0, 299)
\set s random(1, 1000000000000)
INSERT INTO raw_events ($RAW_COLUMNS) SELECT $RAW_VALUES FROM generate_series(0, $1 - 1) AS r;
SQL
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# cluster_start DIR: initdb into DIR and start it.
cluster_start() {
    local dir=$1 bin
    bin=$(pg_bin)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
    export PGHOST=127.0.0.1 PGUSER=postgres PGPORT
    PGPORT=$(free_port)
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
        -o "-p $PGPORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=512MB" \
        start >/dev/null
    CLUSTER_DIR=$dir
}

cluster_stop() {
    [ -n "${CLUSTER_DIR:-}" ] || return 0
    as_pg "$(pg_bin)/pg_ctl" -D "$CLUSTER_DIR/data" -m fast stop >/dev/null || true
    CLUSTER_DIR=
}

# latency_json LOGPREFIX: p50/p99/max in ms from pgbench's per-transaction logs.
latency_json() {
    cat "$1".* | python3 -c '
import sys, json
t = sorted(int(line.split()[2]) for line in sys.stdin if line.strip())
import math
q = lambda p: t[max(1, min(len(t), math.ceil(len(t) * p))) - 1] / 1000 if t else 0
print(json.dumps({"p50": q(0.5), "p99": q(0.99), "max": q(1.0)}))'
}

# pgbench_run SYSTEM SCENARIO CLIENTS ROWS DATABASE SCRIPT [EXTRA_JSON]: warm up, measure,
# and append one report line to $RESULTS.
pgbench_run() {
    local system=$1 scenario=$2 clients=$3 rows=$4 db=$5 script=$6 extra=${7:-}
    local jobs=$(( clients < 2 ? 1 : 2 )) logs out tps
    logs=$(mktemp -d)
    if [ "${WARMUP:-2}" -gt 0 ]; then
        pgbench -n -M prepared -c "$clients" -j "$jobs" -T "$WARMUP" -f "$script" "$db" >/dev/null 2>&1 ||
            { echo "pgbench failed on $script: rerun it by hand to see why" >&2; return 1; }
    fi
    out=$(pgbench -n -M prepared -c "$clients" -j "$jobs" -T "$DURATION" -f "$script" \
        -l --log-prefix="$logs/tx" "$db" 2>&1) || { echo "pgbench failed: $out" >&2; return 1; }
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
    local failed
    failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
    python3 - "$system" "$scenario" "$clients" "$rows" "$tps" "${failed:-0}" "$(latency_json "$logs/tx")" "$extra" >>"$RESULTS" <<'PY'
import json, sys
system, scenario, clients, rows, tps, failed, latency, extra = sys.argv[1:]
line = {"system": system, "scenario": scenario, "clients": int(clients),
        "events_per_request": int(rows), "seconds": float(__import__("os").environ["DURATION"]),
        "requests_per_sec": round(float(tps or 0)), "events_per_sec": round(float(tps or 0) * int(rows)),
        "latency_ms": json.loads(latency), "errors": int(failed)}
line.update(json.loads(extra or "{}"))
print(json.dumps(line))
PY
    rm -rf "$logs"
    tail -1 "$RESULTS"
}
