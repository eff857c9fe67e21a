#!/usr/bin/env bash
# Starts the release binary once per runtime feature, as the README says
# (`cargo run --release --features X -- --bind 127.0.0.1:PORT`), and does a
# mosquitto_sub -t 'a/#' -q 1 / mosquitto_pub -t a/b -q 1 round trip.
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for feature in async-std smol; do
  cargo build --release --quiet --features "$feature"
  port=$(free_port)
  log=$(mktemp)
  cargo run --release --quiet --features "$feature" -- --bind "127.0.0.1:$port" -v >"$log" 2>&1 &
  broker=$!
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  out=$(mktemp)
  timeout 20 stdbuf -oL mosquitto_sub -p "$port" -t 'a/#' -q 1 -C 1 -W 15 -v >"$out" &
  sub=$!
  for _ in $(seq 100); do grep -q "subscribed to" "$log" && break; sleep 0.1; done
  mosquitto_pub -p "$port" -t a/b -q 1 -m "hello $feature"
  wait "$sub"
  kill -TERM "$broker"; wait "$broker" || true
  grep -q "a/b hello $feature" "$out" || { echo "FAIL: $feature"; cat "$log" "$out"; exit 1; }
  grep -q "runtime $feature" "$log" || { echo "FAIL: $feature did not log its runtime"; cat "$log"; exit 1; }
  echo "ok: --features $feature served mosquitto_sub/mosquitto_pub at QoS 1"
done
