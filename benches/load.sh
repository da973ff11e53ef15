#!/usr/bin/env bash
# The end-to-end load harness: sluice (memory, NATS and MQTT routes) vs nginx + Nchan (1 and 2
# workers) vs a minimal ideal fan-out server, on 127.0.0.1 only. Prints one markdown table.
#
#   benches/load.sh                 the full run (about 15-25 minutes on 2 cores)
#   benches/load.sh --quick         a short smoke run
#   benches/load.sh --origin        instead: 10,000 browsers on one upstream SSE stream (the ideal
#                                   server as origin), via sluice's sse broker vs nginx proxy_pass;
#                                   the origin's open connections and CPU per row (--origin 500: fewer)
#   benches/load.sh --help          every option (servers, subscriber counts, HTTP/2 shapes, ...)
#
# Every process it starts is stopped by its PID when its run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages cmake=cmake cc=gcc nats-server=nats-server mosquitto=mosquitto nginx=nginx
# The Nchan module is a file, not a command: install its package when the file is missing.
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || scripts/ensure-packages missing-nchan-module=libnginx-mod-nchan
export PATH="$PATH:/usr/sbin:/sbin"
cargo build --release --locked -p sluice -p sluice-load >&2
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)" >&2
exec target/release/sluice-load "$@"
