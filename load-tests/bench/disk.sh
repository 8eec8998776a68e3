#!/usr/bin/env bash
# Disk-tier hits against memory-tier hits (the same Outpost build, with a
# memory tier too small for the working set and with one that holds it) and
# nginx proxy_cache, in one run. Installs what it needs.
#
#   load-tests/bench/disk.sh [--objects 1000] [--size 100KiB] [--memory 8MiB] [--duration 10] [--repeats 3] [--cold] [--client wrk]
#
# With --cold (root), the page cache is dropped after warming and each
# object is asked for once: every hit reads its file from the disk device.
#
# The server under test is pinned to CPU 0 and the client to CPU 1. Every load is
# bounded by --duration and stops by itself; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need nginx:nginx wrk:wrk

cargo build --release --quiet
cargo build --release --quiet -p outpost-load --example sink_load
# The benchmarks' client asks (`--client wrk` for wrk).
exec python3 load-tests/bench/disk.py --outpost target/release/outpost --client target/release/examples/sink_load "$@"
