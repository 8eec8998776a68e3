#!/usr/bin/env bash
# New connections and TLS, the Outpost edge against nginx, in one run:
# handshakes per second and per CPU-second, 1 KiB hits over keep-alive TLS,
# what a new visitor waits for under an open model (HTTPS and cleartext),
# and both under a TLS handshake flood. Installs what it needs.
#
#   load-tests/bench/tls.sh [--duration 10] [--repeats 3] [--connections 64]
#                           [--loads hits,handshakes,open,open-http,flood] [--client wrk]
#
# The servers are pinned to CPU 0 and the load to CPU 1. Every load is
# bounded by --duration and stops by itself; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need nginx:nginx wrk:wrk openssl:openssl curl:curl

cargo build --release --quiet
cargo build --release --quiet -p outpost-load --example hello_flood --example sink_load
# The hits loads run the benchmarks' client (`--client wrk` for wrk).
exec python3 load-tests/bench/tls.py --outpost target/release/outpost --client target/release/examples/sink_load "$@"
