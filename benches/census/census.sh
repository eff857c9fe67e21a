#!/usr/bin/env bash
# Allocation census of idle connections: what each one holds, by size.
#
#   bash benches/census/census.sh [BINARY] [RUNTIME] [N]
#   bash benches/census/census.sh target/release/midge smol 10000
#
# Runs BINARY (--in-memory, on a free port) under hist.so, an LD_PRELOAD
# shim that tracks every live allocation; SIGUSR2 writes a histogram of
# their requested sizes. idle.py dumps one, opens N idle MQTT 3.1.1
# connections (keepalive 60 s, CONNECT and CONNACK only), waits 1.5 s and
# dumps another; the difference divided by N is printed: allocations of
# each size per connection, requested bytes per connection, and what sits
# in allocations of 64 KiB or more (hash tables, slabs). The shim's own
# tables make the process's RSS ~100 MB larger: read RSS from
# benches/compare.sh (SCENARIOS=conns), not from this.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-target/release/midge}; RT=${2:-smol}; N=${3:-10000}
OUT=$(mktemp -d)
gcc -O2 -shared -fPIC -o "$OUT/hist.so" "$here/hist.c" -ldl -lpthread
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HIST_DIR=$OUT LD_PRELOAD=$OUT/hist.so "$BIN" --bind "127.0.0.1:$PORT" --in-memory --runtime "$RT" >"$OUT/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "listening on" "$OUT/log" && break; sleep 0.1; done
python3 "$here/idle.py" "$PORT" "$N" "$PID"
kill $PID; wait $PID 2>/dev/null || true
python3 - "$OUT" "$N" <<'PY'
import glob, sys
out, n = sys.argv[1], int(sys.argv[2])
fs = sorted(glob.glob(f"{out}/h.*"), key=lambda f: int(f.rsplit(".", 1)[1]))
load = lambda f: {k: int(v) for k, v in (l.split() for l in open(f))}
a, b = load(fs[0]), load(fs[1])
total = 0
for k in sorted((k for k in set(a) | set(b) if k != "big"), key=int):
    d = b.get(k, 0) - a.get(k, 0)
    if abs(d) >= n * 0.05:
        print(f"size {int(k):6d}  per connection {d / n:6.2f}  bytes {int(k) * d / n:8.1f}")
        total += int(k) * d
print(f"requested bytes per connection {total / n:.0f}, in allocations of 64 KiB or more {(b.get('big', 0) - a.get('big', 0)) / n:.0f}")
PY
