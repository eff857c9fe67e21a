#!/usr/bin/env bash
# Forwarding through a bridge at QoS 1: publishers on an edge broker, their
# subscriber on a central Mosquitto, the edge bridging `bench/#` out to it.
# Edges compared in the same run, interleaved: midge (smol, its durable store
# in a fresh directory: the default) and Mosquitto 2.0 configured by the same
# bridge lines (in memory, its default); plus, for scale, the loadgen
# straight on the central Mosquitto (no bridge).
#
#   bash benches/bridge.sh
#   RUNS=5 DURATION=5 CLIENTS=10 bash benches/bridge.sh
#   MIDGE_CONF='max_inflight_messages 100\n' bash benches/bridge.sh   # extra midge lines (tuned)
#
# loadgen's end-to-end window (500 messages per subscriber) keeps the
# publishers from running ahead of what arrives at the far end, and it
# reports loss. Only processes this script started are signalled, by PID.
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
MIDGE=$TARGET_DIR/release/midge
LOADGEN=$TARGET_DIR/release/examples/loadgen
OUT=${OUT:-$TARGET_DIR/bench-bridge/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$TMP"; }
trap cleanup EXIT
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --features smol >"$OUT/build.log" 2>&1 \
        && cargo build --release --example loadgen --features smol >>"$OUT/build.log" 2>&1 \
        || { echo "build failed: $OUT/build.log" >&2; exit 1; }
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    return 1
}
# start NAME: sets PID and PORT of a started edge (or the central broker).
start_central() {
    CENTRAL=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 0\n' \
        "$CENTRAL" >"$TMP/central.conf"
    "$MOSQUITTO" -c "$TMP/central.conf" >"$OUT/central.log" 2>&1 &
    CENTRAL_PID=$!; PIDS+=("$CENTRAL_PID"); wait_port "$CENTRAL"
}
bridge_lines() {
    printf 'connection bench\naddress 127.0.0.1:%s\ntopic bench/# out 1\nremote_clientid bench-bridge-%s\n' "$CENTRAL" "$1"
}
start_edge() {
    PORT=$(free_port)
    case $1 in
        midge)
            rm -rf "$TMP/midge-data"
            { printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s\n%b' \
                "$PORT" "$TMP/midge-data" "${MIDGE_CONF:-}"; bridge_lines "$RANDOM"; } >"$TMP/midge.conf"
            "$MIDGE" -c "$TMP/midge.conf" --runtime smol >"$OUT/midge-$2.log" 2>&1 & ;;
        mosquitto)
            { printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 0\n' "$PORT"
              bridge_lines "$RANDOM"; } >"$TMP/mosquitto-edge.conf"
            "$MOSQUITTO" -c "$TMP/mosquitto-edge.conf" >"$OUT/mosquitto-$2.log" 2>&1 & ;;
        none) PORT=$CENTRAL; PID=""; return 0 ;;
    esac
    PID=$!; PIDS+=("$PID"); wait_port "$PORT"
    sleep 1   # the bridge connects after the listener opens; its first subscription is not an event we can see
}

start_central
printf 'edge\trun\treceived_per_s\tlost\n' >"$OUT/results.tsv"
for run in $(seq "$RUNS"); do
    for edge in midge mosquitto none; do
        start_edge "$edge" "$run"
        line=$(timeout $((DURATION + 40)) "$LOADGEN" --scenario fanin --qos 1 --clients "$CLIENTS" \
            --duration "$DURATION" --port "$PORT" --sub-port "$CENTRAL" --label "$edge" | tail -1)
        rate=$(echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d.get("received_per_s",0)), d.get("lost","?"))')
        printf '%s\t%s\t%s\n' "$edge" "$run" "${rate// /	}" >>"$OUT/results.tsv"
        echo "$edge run $run: $rate (received/s, lost)" >&2
        [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    done
done
python3 - "$OUT/results.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
for edge, label in [("midge", "midge edge (durable store) -> Mosquitto"), ("mosquitto", "Mosquitto edge (in memory) -> Mosquitto"), ("none", "no bridge (loadgen on the central Mosquitto)")]:
    r = [float(x["received_per_s"]) for x in rows if x["edge"] == edge]
    lost = sum(int(x["lost"]) for x in rows if x["edge"] == edge and x["lost"].lstrip("-").isdigit())
    if r:
        print(f"{label}: median {statistics.median(r)/1000:.1f}k msg/s over {len(r)} runs, lost {lost}")
PY
echo "results: $OUT/results.tsv" >&2
