#!/usr/bin/env bash
# The cluster's cost, measured: a 2-node midge cluster on one redis-server,
# with loadgen's publishers on node a and its subscribers on node b
# ("cross"), beside the same cluster with every client on node a ("local")
# and a midge that is in no cluster ("single"), interleaved in one run. For
# each cross run it also counts the commands Redis processed and the
# message copies node a forwarded (its midge_cluster_forwarded_messages_total),
# and prints Redis commands per forwarded message.
#
#   bash benches/cluster.sh
#   RUNS=5 DURATION=5 bash benches/cluster.sh
#   FSYNC=everysec bash benches/cluster.sh   # Redis appendfsync (default always, as docs/cluster.md recommends)
#   SCENARIOS="fanin-q1 fanout-q0 fanout-q1 latency-q1" bash benches/cluster.sh
#   SCENARIOS="fanin-p-q1 fanout-p-q1" bash benches/cluster.sh   # -p: persistent subscribers
#     (a cluster node keeps persistent sessions in Redis, a single node in its store)
#
# loadgen keeps its end-to-end window (a publisher runs at most 500
# messages ahead of what its subscribers received) and reports loss. Every
# node runs on smol with its durable store in a fresh directory (the
# default). Only processes this script started are signalled, by PID.
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
FSYNC=${FSYNC:-always}
SCENARIOS=${SCENARIOS:-"fanin-q1 fanout-q0 fanout-q1 latency-q1"}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
MIDGE=$TARGET_DIR/release/midge
LOADGEN=$TARGET_DIR/release/examples/loadgen
OUT=${OUT:-$TARGET_DIR/bench-cluster/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$TMP"; }
trap cleanup EXIT
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --features smol,cluster --bin midge >"$OUT/build.log" 2>&1 \
        && cargo build --release --example loadgen --features smol >>"$OUT/build.log" 2>&1 \
        || { echo "build failed: $OUT/build.log" >&2; exit 1; }
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    return 1
}
redis_commands() {
    redis-cli -p "$REDIS" INFO stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'
}
forwarded() {
    python3 - "$1" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(next((l.split()[-1] for l in body.splitlines() if l.startswith("midge_cluster_forwarded_messages_total")), "0"))
PY
}

REDIS=$(free_port)
mkdir -p "$TMP/redis"
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --dir "$TMP/redis" \
    --appendonly yes --appendfsync "$FSYNC" >"$OUT/redis.log" 2>&1 &
PIDS+=("$!"); wait_port "$REDIS" || { echo "redis-server did not start: $OUT/redis.log" >&2; exit 1; }

# start_node NAME [cluster args...]: sets PORT and PID.
start_node() {
    local name=$1; shift
    PORT=$(free_port)
    rm -rf "$TMP/data-$name"
    "$MIDGE" --runtime smol --bind "127.0.0.1:$PORT" --data-dir "$TMP/data-$name" "$@" >"$OUT/$name.log" 2>&1 &
    PID=$!; PIDS+=("$PID"); wait_port "$PORT"
}
start_cluster() {
    redis-cli -p "$REDIS" FLUSHALL >/dev/null
    HTTP_A=$(free_port)
    start_node a --cluster-redis "redis://127.0.0.1:$REDIS" --node-id a --http-listener "127.0.0.1:$HTTP_A"
    PORT_A=$PORT; PID_A=$PID
    start_node b --cluster-redis "redis://127.0.0.1:$REDIS" --node-id b
    PORT_B=$PORT; PID_B=$PID
}
stop() { for p in "$@"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; }

# run MODE SCENARIO: one loadgen run; appends a line to results.tsv.
run() {
    local mode=$1 sc=$2 scenario qos args=()
    scenario=${sc%-q*}; qos=${sc##*-q}
    if [ "${scenario%-p}" != "$scenario" ]; then
        scenario=${scenario%-p}; args+=(--persistent)
    fi
    case $scenario in
        fanin) args+=(--clients 10) ;;
        fanout) args+=(--clients 10) ;;
        latency) args+=(--rate 10000) ;;
    esac
    local pub sub
    case $mode in
        single) pub=$PORT; sub=$PORT ;;
        local) pub=$PORT_A; sub=$PORT_A ;;
        cross) pub=$PORT_A; sub=$PORT_B ;;
    esac
    local c0 f0 c1 f1
    if [ "$mode" = cross ]; then
        # The subscribers' routes reach node a through Redis: loadgen's
        # warm-up (1.5 s) covers that.
        c0=$(redis_commands); f0=$(forwarded "$HTTP_A")
    fi
    line=$(timeout $((DURATION + 60)) "$LOADGEN" --scenario "$scenario" --qos "$qos" "${args[@]}" \
        --duration "$DURATION" --port "$pub" --sub-port "$sub" --label "$mode" | tail -1)
    local ops=""
    if [ "$mode" = cross ]; then
        c1=$(redis_commands); f1=$(forwarded "$HTTP_A")
        ops=$(python3 -c "c=$c1-$c0; f=$f1-$f0; print(f'{c/f:.3f}' if f else '')")
    fi
    echo "$line" | python3 -c '
import json, sys
mode, sc, ops = sys.argv[1:4]
d = json.load(sys.stdin)
print("\t".join(str(x) for x in [mode, sc, round(d.get("received_per_s", 0)), d.get("lost", "?"),
      d.get("p50_us", ""), d.get("p99_us", ""), ops]))' "$mode" "$sc" "$ops" >>"$OUT/results.tsv"
    tail -1 "$OUT/results.tsv" >&2
}

printf 'mode\tscenario\treceived_per_s\tlost\tp50_us\tp99_us\tredis_cmds_per_forwarded\n' >"$OUT/results.tsv"
for r in $(seq "$RUNS"); do
    for sc in $SCENARIOS; do
        start_node single; SINGLE=$PID
        run single "$sc"; stop "$SINGLE"
        start_cluster
        run local "$sc"
        run cross "$sc"
        stop "$PID_A" "$PID_B"
    done
done
python3 - "$OUT/results.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("| scenario | single node | cluster, all on a | cluster, a -> b | a -> b / single | lost | Redis commands per forwarded message |")
print("|---|---|---|---|---|---|---|")
for sc in dict.fromkeys(r["scenario"] for r in rows):
    def col(mode, key="received_per_s"):
        return [float(r[key]) for r in rows if r["scenario"] == sc and r["mode"] == mode and r[key] not in ("", "?")]
    lost = sum(int(r["lost"]) for r in rows if r["scenario"] == sc and r["lost"].lstrip("-").isdigit())
    ops = col("cross", "redis_cmds_per_forwarded")
    if sc.startswith("latency"):
        cell = lambda m: f"p50 {med(col(m, 'p50_us')):.0f} us, p99 {med(col(m, 'p99_us')):.0f} us"
        ratio = f"p99 {med(col('cross', 'p99_us')) / med(col('single', 'p99_us')):.1f}x"
    else:
        cell = lambda m: f"{med(col(m)) / 1000:.0f}k msg/s"
        ratio = f"{med(col('cross')) / med(col('single')):.2f}"
    print(f"| {sc} | {cell('single')} | {cell('local')} | {cell('cross')} | {ratio} | {lost} | {med(ops):.2f} |")
PY
echo "results: $OUT/results.tsv" >&2
