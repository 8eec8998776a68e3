#!/usr/bin/env bash
# TLS benchmark: handshakes per second and 1 KiB cache hits over keep-alive
# TLS, the Outpost edge against nginx, in one run. Installs what it needs.
#
#   load-tests/bench/tls.sh [--duration 10] [--repeats 3] [--connections 64]
#
# The server under test is pinned to CPU 0 and wrk to CPU 1. Every load is
# bounded by --duration and stops by itself; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need nginx:nginx wrk:wrk openssl:openssl curl:curl

cargo build --release --quiet
exec python3 load-tests/bench/tls.py --outpost target/release/outpost "$@"
