#!/usr/bin/env bash
# Compares midge (smol and async-std runtimes) with Mosquitto and, if it is on
# PATH, rumqttd, using the project's load generator (examples/loadgen).
#
#   bash benches/compare.sh
#   DURATION=3 RUNS=1 SCENARIOS="fanin fanout pairs latency" bash benches/compare.sh
#   SCENARIOS=soak DURATION=600 BROKERS="midge-smol" bash benches/compare.sh
#
# Environment:
#   RUNS=3           runs per (case, broker); brokers are interleaved A B C A B C
#                    (default 1 when SCENARIOS=soak)
#   DURATION=10      measured seconds per run (loadgen adds a 1.5 s warm-up)
#   SCENARIOS="..."  scenario names (fanin fanout pairs latency conns subs
#                    retained) or case ids (e.g. fanin-q1-64); default: all of
#                    those. Optional, not in the default: soak (mixed traffic for
#                    DURATION seconds, acked-but-lost count and broker RSS over
#                    time), e.g. SCENARIOS=soak DURATION=600 BROKERS=midge-smol;
#                    ws (fan-in and fan-out at QoS 0 and 1 over WebSockets:
#                    midge --bind-ws, Mosquitto's "protocol websockets"
#                    listener; rumqttd is not run for them), e.g.
#                    SCENARIOS="fanin-q0-64 fanin-q1-64 fanout-q0-64 fanout-q1-64 ws"
#   BROKERS="..."    subset of: midge-smol midge-async-std mosquitto rumqttd, rumqttd-tuned
#                    (max_outgoing_packet_count 200000 instead of the shipped 200), and for
#                    the durability comparison midge-memory (smol, --in-memory) and
#                    mosquitto-persist (persistence true), and midge-bigqueue (smol,
#                    --max-queued-messages 1000000: no queue limit in practice, so
#                    no backpressure either), and midge-base (smol, the binary at
#                    MIDGE_BASE, e.g. an older commit's build: an A/B in one run)
#   PROTOCOLS="4"    MQTT protocol levels each case runs at, interleaved within
#                    every run: 4 (3.1.1, case id as is), 5 (5.0: loadgen
#                    --protocol 5, case id + "-v5") and 5-alias (5.0 with
#                    --topic-alias, id + "-v5a"). E.g. PROTOCOLS="4 5" runs
#                    fanin-q0-64 and fanin-q0-64-v5 side by side, for every
#                    broker in BROKERS but rumqttd (its config here is a 3.1.1
#                    listener); the table adds each broker's 5.0/3.1.1 ratio
#   CONNS=10000      connections for the conns case
#   INFLIGHT=100     outgoing QoS 1/2 window per client, the same for every broker
#                    (midge --max-inflight, Mosquitto max_inflight_messages, rumqttd
#                    max_inflight_count; 100 is rumqttd's shipped setting, 20 the
#                    default of midge and Mosquitto)
#   RUMQTTD_OUTGOING=200  rumqttd's max_outgoing_packet_count (its shipped value);
#                    rumqttd sends a new subscription at most this many retained
#                    messages (it reads them all and truncates), so the retained
#                    case needs RUMQTTD_OUTGOING=200000 for rumqttd to deliver them
#   NO_BUILD=1       use the binaries already in target/release ($CARGO_TARGET_DIR/release
#                    if that is set, as for the build)
#   OUT=dir          where logs and results.tsv go (default target/bench-compare/<time>)
#   LOADGEN_ARGS=""  extra loadgen arguments for every run (e.g. "--threads 1")
#   MIDGE_ARGS=""    extra midge arguments (e.g. "--in-memory"); by default midge
#                    runs with its durable store in a fresh temporary --data-dir
#   MOSQUITTO_NODELAY=1  add "set_tcp_nodelay true" to Mosquitto's config, as
#                    midge sets TCP_NODELAY; with Nagle (0) Mosquitto's small-
#                    message throughput swings 3x with the loadgen's thread count
#
# Every broker is started fresh for every run, on a free port on 127.0.0.1,
# and stopped afterwards; only processes this script started are signalled,
# by PID. Each loadgen run is bounded (duration + 30 s inside, + 40 s here).

set -u
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"fanin fanout pairs latency conns subs retained"}
if [ "$SCENARIOS" = soak ]; then RUNS=${RUNS:-1}; else RUNS=${RUNS:-3}; fi
DURATION=${DURATION:-10}
BROKERS=${BROKERS:-"midge-smol midge-async-std mosquitto rumqttd"}
CONNS=${CONNS:-10000}
PROTOCOLS=${PROTOCOLS:-4}
for p in $PROTOCOLS; do
    case $p in 4|5|5-alias) ;; *) echo "unknown protocol $p in PROTOCOLS (4, 5, 5-alias)" >&2; exit 2 ;; esac
done
INFLIGHT=${INFLIGHT:-100}
RUMQTTD_OUTGOING=${RUMQTTD_OUTGOING:-200}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
MIDGE_ARGS=${MIDGE_ARGS:-}
MOSQUITTO_NODELAY=${MOSQUITTO_NODELAY:-1}
OUT=${OUT:-target/bench-compare/$(date +%Y%m%d-%H%M%S)}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
MIDGE=$TARGET_DIR/release/midge
LOADGEN=$TARGET_DIR/release/examples/loadgen

mkdir -p "$OUT"
TMP=$(mktemp -d)
RESULTS="$OUT/results.tsv"
: > "$RESULTS"
BROKER_PID=""

cleanup() {
    if [ -n "$BROKER_PID" ]; then
        kill -TERM "$BROKER_PID" 2>/dev/null
        sleep 0.5
        kill -KILL "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Idle connections need file descriptors on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
FD_LIMIT=$(ulimit -n)

# ------------------------------------------------------------------ build --
if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "building (cargo build --release --all-features; --example loadgen --features smol)" >&2
    cargo build --release --all-features >"$OUT/build.log" 2>&1 \
        && cargo build --release --example loadgen --features smol >>"$OUT/build.log" 2>&1 \
        || { echo "build failed, see $OUT/build.log" >&2; [ -x "$MIDGE" ] && [ -x "$LOADGEN" ] || exit 1;
             echo "using the binaries already in $TARGET_DIR/release" >&2; }
fi
for b in "$MIDGE" "$LOADGEN"; do
    [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }
done

# ---------------------------------------------------------------- brokers --
if ! command -v mosquitto >/dev/null && [ -x /usr/sbin/mosquitto ]; then PATH=$PATH:/usr/sbin; fi
if [[ " $BROKERS " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
    echo "mosquitto not found; installing (apt-get install -y mosquitto)" >&2
    apt-get install -y mosquitto >"$OUT/apt.log" 2>&1 || echo "could not install mosquitto" >&2
fi
# The Debian package starts a system mosquitto on :1883; we never use that port.
ACTIVE=""
NOTES=()
for b in $BROKERS; do
    case $b in
        midge-smol|midge-async-std|midge-memory|midge-bigqueue) ACTIVE="$ACTIVE $b" ;;
        midge-base) if [ -x "${MIDGE_BASE:-}" ]; then ACTIVE="$ACTIVE $b"
                    else echo "midge-base needs MIDGE_BASE=path/to/an/older/midge" >&2; exit 2; fi ;;
        mosquitto|mosquitto-persist) if command -v mosquitto >/dev/null; then ACTIVE="$ACTIVE $b"
                   else NOTES+=("mosquitto: not installed, skipped"); fi ;;
        rumqttd|rumqttd-tuned) if command -v rumqttd >/dev/null; then ACTIVE="$ACTIVE $b"
                 else NOTES+=("rumqttd: not on PATH, skipped (cargo install rumqttd to include it)"); fi ;;
        *) echo "unknown broker $b" >&2; exit 2 ;;
    esac
done

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))   # below the ephemeral range (32768-)
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    return 1
}

# start_broker NAME PORT LOG: sets BROKER_PID, returns non-zero if it does not listen.
# With TRANSPORT=ws the listener speaks MQTT over WebSockets (path /mqtt).
TRANSPORT=tcp
start_broker() {
    local name=$1 port=$2 log=$3
    local bind="--bind"
    [ "$TRANSPORT" = ws ] && bind="--bind-ws"
    case $name in
        midge-smol|midge-async-std)
            rm -rf "$TMP/midge-data"
            # shellcheck disable=SC2086
            "$MIDGE" $bind "127.0.0.1:$port" --runtime "${name#midge-}" --data-dir "$TMP/midge-data" \
                --max-inflight "$INFLIGHT" $MIDGE_ARGS >"$log" 2>&1 & ;;
        midge-base)
            rm -rf "$TMP/midge-data"
            # shellcheck disable=SC2086
            "$MIDGE_BASE" $bind "127.0.0.1:$port" --runtime smol --data-dir "$TMP/midge-data" \
                --max-inflight "$INFLIGHT" $MIDGE_ARGS >"$log" 2>&1 & ;;
        midge-bigqueue)
            rm -rf "$TMP/midge-data"
            # shellcheck disable=SC2086
            "$MIDGE" $bind "127.0.0.1:$port" --runtime smol --data-dir "$TMP/midge-data" --max-inflight "$INFLIGHT" \
                --max-queued-messages 1000000 $MIDGE_ARGS >"$log" 2>&1 & ;;
        midge-memory)
            # shellcheck disable=SC2086
            "$MIDGE" $bind "127.0.0.1:$port" --runtime smol --in-memory --max-inflight "$INFLIGHT" $MIDGE_ARGS >"$log" 2>&1 & ;;
        mosquitto-persist)
            rm -rf "$TMP/mosquitto-data"; mkdir -p "$TMP/mosquitto-data"
            printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nset_tcp_nodelay true\nmax_inflight_messages %s\n' \
                "$port" "$TMP/mosquitto-data" "$INFLIGHT" >"$TMP/mosquitto.conf"
            mosquitto -c "$TMP/mosquitto.conf" >"$log" 2>&1 & ;;
        mosquitto)
            printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages %s\n' \
                "$port" "$INFLIGHT" >"$TMP/mosquitto.conf"
            # Mosquitto 2.0.11's websockets listener (libwebsockets) cannot
            # bind an address (it listens on every interface), and 2.0.11
            # refuses to start with websockets listeners only: an unused
            # plain one on 127.0.0.1 goes with it.
            [ "$TRANSPORT" = ws ] && sed -i "1c listener $port\\nprotocol websockets\\nlistener $(free_port) 127.0.0.1" \
                "$TMP/mosquitto.conf"
            [ "$MOSQUITTO_NODELAY" = 1 ] && echo 'set_tcp_nodelay true' >>"$TMP/mosquitto.conf"
            mosquitto -c "$TMP/mosquitto.conf" >"$log" 2>&1 & ;;
        rumqttd|rumqttd-tuned)
            # rumqttd-tuned: the router lets a connection take 200,000
            # packets per read instead of the shipped 200 (what rumqttd's
            # config comments offer for throughput).
            local outgoing=$RUMQTTD_OUTGOING
            [ "$name" = rumqttd-tuned ] && outgoing=200000
            # Format of rumqttd.toml in bytebeamio/rumqtt (v4 = MQTT 3.1.1 listener).
            cat >"$TMP/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = $((CONNS + 100))
max_outgoing_packet_count = $outgoing
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = $INFLIGHT
    dynamic_filters = true
EOF
            rumqttd -c "$TMP/rumqttd.toml" >"$log" 2>&1 & ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then BROKER_PID=""; return 1; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then sleep 0.2; return 0; fi
        sleep 0.05
    done
    return 1
}

stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null
    for _ in $(seq 1 50); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
    BROKER_PID=""
    rm -rf "$TMP/midge-data"
}

# ------------------------------------------------------------------ cases --
# id | loadgen arguments
CASES=(
    "fanin-q0-64|--scenario fanin --qos 0 --payload 64"
    "fanin-q1-64|--scenario fanin --qos 1 --payload 64"
    "fanout-q0-64|--scenario fanout --qos 0 --payload 64"
    "fanout-q1-64|--scenario fanout --qos 1 --payload 64"
    "pairs-q0-64|--scenario pairs --qos 0 --payload 64"
    "pairs-q1-64|--scenario pairs --qos 1 --payload 64"
    "latency-q0-64|--scenario latency --qos 0 --payload 64 --rate 10000"
    "conns-$CONNS|--scenario conns --clients $CONNS"
    "subs-q0-64|--scenario subs --qos 0 --payload 64"
    "retained-q0-64|--scenario retained --qos 0 --payload 64"
    "fanin-q0-1024|--scenario fanin --qos 0 --payload 1024"
    "fanout-q0-1024|--scenario fanout --qos 0 --payload 1024"
    "fanin-q1-1024|--scenario fanin --qos 1 --payload 1024"
    "fanout-q1-1024|--scenario fanout --qos 1 --payload 1024"
    "pairs-q0-1024|--scenario pairs --qos 0 --payload 1024"
    "pairs-q1-1024|--scenario pairs --qos 1 --payload 1024"
    "durable-q1-64|--scenario fanin --qos 1 --payload 64 --persistent"
    "durable-fanout100-q1-64|--scenario fanout --clients 100 --qos 1 --payload 64 --persistent"
    "fanout100-q0-64|--scenario fanout --clients 100 --qos 0 --payload 64"
    "fanout100-q1-64|--scenario fanout --clients 100 --qos 1 --payload 64"
    "soak|--scenario soak"
    "ws-fanin-q0-64|--scenario fanin --qos 0 --payload 64 --transport ws"
    "ws-fanin-q1-64|--scenario fanin --qos 1 --payload 64 --transport ws"
    "ws-fanout-q0-64|--scenario fanout --qos 0 --payload 64 --transport ws"
    "ws-fanout-q1-64|--scenario fanout --qos 1 --payload 64 --transport ws"
)
SELECTED=()
for c in "${CASES[@]}"; do
    id=${c%%|*}
    for s in $SCENARIOS; do
        if [ "$s" = "${id%%-*}" ] || [ "$s" = "$id" ]; then SELECTED+=("$c"); break; fi
    done
done
[ ${#SELECTED[@]} -gt 0 ] || { echo "no case matches SCENARIOS=\"$SCENARIOS\"" >&2; exit 2; }
if [ "$FD_LIMIT" != unlimited ] && [ "$FD_LIMIT" -lt $((CONNS + 200)) ]; then
    NOTES+=("open-file limit $FD_LIMIT is below CONNS=$CONNS + margin: conns will fail beyond it")
fi

# ------------------------------------------------------------------- runs --
echo "results in $OUT; brokers:$ACTIVE; runs: $RUNS; duration: ${DURATION}s" >&2
for c in "${SELECTED[@]}"; do
    base_id=${c%%|*}
    base_args=${c#*|}
    TRANSPORT=tcp
    [[ $base_args == *"--transport ws"* ]] && TRANSPORT=ws
    for run in $(seq 1 "$RUNS"); do
        for protocol in $PROTOCOLS; do
            case $protocol in
                4) id=$base_id; args=$base_args ;;
                5) id=$base_id-v5; args="$base_args --protocol 5" ;;
                5-alias) id=$base_id-v5a; args="$base_args --protocol 5 --topic-alias" ;;
            esac
            for broker in $ACTIVE; do
                # rumqttd's shipped configuration has no WebSocket listener, and
                # the one written here speaks 3.1.1 only.
                [[ $broker == rumqttd* ]] && { [ "$TRANSPORT" = ws ] || [ "$protocol" != 4 ]; } && continue
                port=$(free_port) || { echo "no free port" >&2; exit 1; }
                log="$OUT/$id.$broker.$run.log"
                if ! start_broker "$broker" "$port" "$log"; then
                    echo "$id $broker run $run: broker did not start (see $log)" >&2
                    printf '%s\t%s\t%s\t%s\n' "$id" "$broker" "$run" '{"error":"broker did not start"}' >>"$RESULTS"
                    stop_broker
                    continue
                fi
                extra=""
                [[ $args == *"--scenario conns"* || $args == *"--scenario soak"* ]] && extra="--broker-pid $BROKER_PID"
                # shellcheck disable=SC2086
                out=$(timeout -k 5 $((DURATION + 40)) "$LOADGEN" $args $extra --port "$port" --host 127.0.0.1 \
                        --duration "$DURATION" --label "$broker" $LOADGEN_ARGS 2>"$OUT/$id.$broker.$run.stderr")
                rc=$?
                stop_broker
                human=$(printf '%s\n' "$out" | grep -v '^{' | head -1)
                json=$(printf '%s\n' "$out" | grep '^{' | tail -1)
                [ -n "$json" ] || json="{\"error\":\"loadgen exit $rc\"}"
                echo "[$run/$RUNS] ${human:-$id $broker: loadgen exit $rc}" >&2
                printf '%s\t%s\t%s\t%s\n' "$id" "$broker" "$run" "$json" >>"$RESULTS"
            done
        done
    done
done

# ------------------------------------------------------------------ table --
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -r)"
echo "midge $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src runtimes 2>/dev/null || echo '+dirty'); $(mosquitto -h 2>/dev/null | head -1); runs: $RUNS x ${DURATION}s; medians"
echo "note: outgoing QoS 1/2 window $INFLIGHT for every broker (INFLIGHT)"
[ "$MOSQUITTO_NODELAY" = 1 ] && echo "note: mosquitto runs with set_tcp_nodelay true (midge sets TCP_NODELAY too)"
[ -n "$MIDGE_ARGS" ] && echo "note: midge arguments: $MIDGE_ARGS"
[ "$PROTOCOLS" != 4 ] && echo "note: protocols $PROTOCOLS (ids: 3.1.1 as is, -v5 MQTT 5.0, -v5a 5.0 with topic aliases)"
[ "$RUMQTTD_OUTGOING" != 200 ] && echo "note: rumqttd runs with max_outgoing_packet_count $RUMQTTD_OUTGOING (shipped: 200)"
for n in "${NOTES[@]}"; do echo "note: $n"; done
awk -F'\t' -v brokers="$ACTIVE" '
function jget(json, key,    re, s) {
    re = "\"" key "\":[^,}]*"
    if (!match(json, re)) return ""
    s = substr(json, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
    gsub(/"/, "", s)
    return s
}
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > t + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt(v) {
    if (v == "") return "-"
    if (v + 0 >= 100000) return sprintf("%.0fk", v / 1000)
    if (v + 0 >= 100) return sprintf("%.0f", v)
    return sprintf("%.3g", v)
}
{
    id = $1; b = $2; j = $4
    if (!(id in seen)) { seen[id] = 1; order[++ncases] = id }
    split(id, parts, "-"); sc = parts[1]; m3 = ""
    if (sc == "latency") { m1 = "p50_us"; m2 = "p99_us" }
    else if (sc == "conns") { m1 = "connect_per_s"; m2 = "rss_per_conn_bytes" }
    else if (sc == "retained") { m1 = "receive_s"; m2 = "retained_received" }
    else if (sc == "subs") { m1 = "received_per_s"; m2 = "subscribe_per_s" }
    else if (sc == "soak") { m1 = "received_per_s"; m2 = "acked_lost"; m3 = "rss_max_mb" }
    else { m1 = "received_per_s"; m2 = "" }
    metric[id, 1] = m1; metric[id, 2] = m2; metric[id, 3] = m3
    v = jget(j, m1); if (v != "" && v != "null") vals[id, b, 1] = vals[id, b, 1] " " v
    if (m2 != "") { v = jget(j, m2); if (v != "" && v != "null") vals[id, b, 2] = vals[id, b, 2] " " v }
    if (m3 != "") { v = jget(j, m3); if (v != "" && v != "null") vals[id, b, 3] = vals[id, b, 3] " " v }
    if (jget(j, "lost") + 0 != 0 || jget(j, "errors") + 0 != 0 || jget(j, "error") != "") flag[id, b] = "*"
}
END {
    nb = split(brokers, bl, " ")
    v5 = 0
    for (k = 1; k <= ncases; k++) if (order[k] ~ /-v5a?$/) v5 = 1
    printf "%-20s %-18s", "case", "metric"
    for (i = 1; i <= nb; i++) printf " %16s", bl[i]
    printf "   %-34s", "midge/mosquitto (smol, async-std)"
    if (v5) printf "   5.0/3.1.1 (%s)", substr(brokers, 2)
    printf "\n"
    for (k = 1; k <= ncases; k++) {
        id = order[k]
        for (m = 1; m <= 3; m++) {
            if (metric[id, m] == "") continue
            printf "%-20s %-18s", (m == 1 ? id : ""), metric[id, m]
            for (i = 1; i <= nb; i++) {
                med[i] = median(vals[id, bl[i], m])
                printf " %16s", fmt(med[i]) (m == 1 ? flag[id, bl[i]] : "")
            }
            ratios = ""
            for (i = 1; i <= nb; i++) if (bl[i] == "mosquitto") q = med[i]
            for (i = 1; i <= nb; i++) if (bl[i] ~ /^midge/) {
                r = (q != "" && q + 0 != 0 && med[i] != "") ? sprintf("%.2f", med[i] / q) : "-"
                ratios = ratios (ratios == "" ? "" : ", ") r
            }
            printf "   %-34s", ratios
            # A 5.0 row: each broker against its own 3.1.1 figure of this run.
            if (id ~ /-v5a?$/) {
                base = id; sub(/-v5a?$/, "", base); same = ""
                for (i = 1; i <= nb; i++) {
                    b0 = median(vals[base, bl[i], m])
                    r = (b0 != "" && b0 + 0 != 0 && med[i] != "") ? sprintf("%.2f", med[i] / b0) : "-"
                    same = same (same == "" ? "" : ", ") r
                }
                printf "   %s", same
            }
            printf "\n"
        }
    }
    print "* = some run lost messages, had connection errors or failed (see results.tsv)."
    print "higher is better for *_per_s and retained_received; lower for *_us, receive_s, rss_per_conn_bytes and rss_max_mb; acked_lost must be 0."
}' "$RESULTS" | tee "$OUT/table.txt"
