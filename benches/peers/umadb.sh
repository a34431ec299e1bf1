#!/usr/bin/env bash
# UmaDB: `cargo install umadb` (its gRPC server; needs Debian's protobuf-compiler), driven by
# umadb-load, a small program on UmaDB's own Rust client, at the same client counts and
# batch sizes as the store's `appends` scenario. UmaDB runs with its default settings.
#
# Needs RESULTS, DURATION, WARMUP, CLIENTS, BATCHES. Installs into target/peers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/cluster.sh"
root=$(cd "$here/../.." && pwd)
peers=$root/target/peers

if ! command -v protoc >/dev/null; then
    apt-get install -y protobuf-compiler >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y protobuf-compiler >/dev/null; }
fi
[ -x "$peers/bin/umadb" ] || cargo install --quiet --locked umadb --root "$peers"
CARGO_TARGET_DIR=$peers/build cargo build --quiet --release \
    --manifest-path "$here/umadb-load/Cargo.toml"
load=$peers/build/release/umadb-load

data=$(mktemp -d)
port=$(free_port)
"$peers/bin/umadb" --listen "127.0.0.1:$port" --db-path "$data/umadb" >"$data/umadb.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

for batch in $BATCHES; do
    for clients in $CLIENTS; do
        "$load" --url "http://127.0.0.1:$port" --clients "$clients" --events-per-request "$batch" \
            --warmup-secs "$WARMUP" --duration-secs "$DURATION" |
            python3 -c 'import json, sys; line = json.load(sys.stdin); print(json.dumps({"system": "umadb", "scenario": "appends", **line}))' \
            >>"$RESULTS"
        tail -1 "$RESULTS"
    done
done
