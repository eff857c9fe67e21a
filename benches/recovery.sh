#!/usr/bin/env bash
# Recovery time of the durable store: queues N QoS 1 messages (64 B) for one
# offline persistent subscriber, stops the broker (kill -9, or SIGTERM for a
# clean stop), starts it again on the same directory and prints the time
# from the start of the process to "listening on", with the store's lines.
#
#   bash benches/recovery.sh [N=1000000] [kill|stop] [path/to/midge]
#
# Only the processes this script starts are signalled, by PID.
set -u
cd "$(dirname "$0")/.."
N=${1:-1000000}
MODE=${2:-kill}
MIDGE=${3:-${CARGO_TARGET_DIR:-target}/release/midge}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
ARGS=(--bind "127.0.0.1:$PORT" --runtime smol --data-dir "$DIR/data" --max-queued-messages 2000000 --max-queued-bytes 0)
"$MIDGE" "${ARGS[@]}" >"$DIR/first.log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q "listening on" "$DIR/first.log" && break; sleep 0.1; done
python3 benches/fill_queue.py "$PORT" "$N"
if [ "$MODE" = kill ]; then kill -KILL "$PID"; else kill -TERM "$PID"; fi
wait "$PID" 2>/dev/null
echo "data dir: $(du -sh "$DIR/data" | cut -f1) ($(ls "$DIR/data" | tr '\n' ' '))"
START=$(date +%s.%N)
"$MIDGE" "${ARGS[@]}" >"$DIR/second.log" 2>&1 &
PID=$!
for _ in $(seq 1200); do grep -q "listening on" "$DIR/second.log" && break; sleep 0.05; done
END=$(date +%s.%N)
grep -o '"msg":"store[^"]*"' "$DIR/second.log"
echo "listening $(python3 -c "print(f'{$END - $START:.2f}')") s after the start ($MODE)"
kill -TERM "$PID"
wait "$PID" 2>/dev/null
