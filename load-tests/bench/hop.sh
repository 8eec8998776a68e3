#!/usr/bin/env bash
# The hop between tiers: an edge in front of a shield in front of the test
# origin, every request a miss at both, over HTTP/2 and HTTP/1.1 between
# the tiers: requests per second, p50 and p99, and the CPU a miss costs
# the edge and the shield.
#
#   load-tests/bench/hop.sh [--duration 6] [--repeats 3] [--connections 64] [--baseline BIN]
#
# Edges and shield are pinned to CPU 0, the origin and wrk to CPU 1. Every
# load is bounded by --duration and stops by itself; all traffic stays on
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need wrk:wrk

cargo build --release --quiet
exec python3 load-tests/bench/hop.py --outpost target/release/outpost "$@"
