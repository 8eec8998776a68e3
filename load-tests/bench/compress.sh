#!/usr/bin/env bash
# Compressed text hits (Accept-Encoding: br, gzip): the Outpost edge against
# nginx proxy_cache with gzip on (levels 1 and 6) and nginx gzip_static, in
# one run. Installs what it needs.
#
#   load-tests/bench/compress.sh [--size 100KiB] [--duration 10] [--repeats 3] [--connections 64] [--client wrk]
#
# The server under test is pinned to CPU 0 and the client to CPU 1: the
# benchmarks' client, which discards bodies in the kernel (`--client wrk`
# for wrk, which copies them). Every load is bounded by --duration and
# stops by itself; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need nginx:nginx wrk:wrk

cargo build --release --quiet
cargo build --release --quiet -p outpost-load --example sink_load
exec python3 load-tests/bench/compress.py --outpost target/release/outpost --client target/release/examples/sink_load "$@"
