#!/usr/bin/env bash
# Wire bytes per event of the dashboard's own stream (/devices on the shipped config.toml: the
# simulator's readings in the JSON envelope), plain and with each encoding, all four read at once
# for SECONDS (default 60). Prints one markdown table. Stops what it starts by PID.
#
#   benches/compression-bytes.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
cargo build --release --locked --quiet -p sluice
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The shipped file on a free port, without its admin listener, with its dashboard folder.
sed -e "s|127.0.0.1:8080|127.0.0.1:$port|" -e "s|^static_dir = \"dashboard\"|static_dir = \"$PWD/dashboard\"|" \
  -e '/^\[admin\]/,/^listen/d' config.toml > "$dir/config.toml"
target/release/sluice --config "$dir/config.toml" > "$dir/sluice.log" 2>&1 &
sluice=$!
pids=()
cleanup() {
  kill "$sluice" "${pids[@]}" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break
  sleep 0.1
done
for encoding in identity gzip br zstd; do
  # Raw bytes as sent (no --compressed): what the client's link carries.
  curl -s -N --max-time "$seconds" -H "accept-encoding: $encoding" -o "$dir/$encoding" \
    "http://127.0.0.1:$port/devices" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
events=$(grep -c '^data:' "$dir/identity")
plain=$(stat -c %s "$dir/identity")
echo "| stream ($events events in ${seconds} s) | bytes | bytes/event | smaller than plain |"
echo "|---|---:|---:|---:|"
for encoding in identity gzip br zstd; do
  bytes=$(stat -c %s "$dir/$encoding")
  awk -v e="$encoding" -v b="$bytes" -v n="$events" -v p="$plain" \
    'BEGIN { printf "| %s | %d | %.1f | %.2fx |\n", e, b, b / n, p / b }'
done
