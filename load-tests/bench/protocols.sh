#!/usr/bin/env bash
# HTTP/1.1, HTTP/2 and HTTP/3 against the same Outpost edge, in one run:
# 1 KiB hits over keep-alive HTTPS (and QUIC), measured with `outpost load`:
# requests per second, p50 and p99, and the edge's CPU per request.
#
#   load-tests/bench/protocols.sh [--duration 10] [--repeats 3] [--connections 64]
#
# The edge is pinned to CPU 0 and the load to CPU 1. Every load is bounded
# by --duration and stops by itself; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need openssl:openssl

cargo build --release --quiet
exec python3 load-tests/bench/protocols.py --outpost target/release/outpost "$@"
