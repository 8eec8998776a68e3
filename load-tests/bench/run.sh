#!/usr/bin/env bash
# Cache-hit benchmark: the Outpost edge against nginx proxy_cache and Varnish,
# in front of the same test origin, in one run. Installs what it needs.
#
#   load-tests/bench/run.sh [--pgo (first)] [--duration 10] [--repeats 3] [--sizes 1KiB,100KiB,1MiB] [--conns 64,256] [--client wrk]
#
# --pgo measures profile-guided builds of the edge and of the bare hyper
# server (load-tests/bench/pgo.sh), built first, in place of plain ones.
#
# The server under test is pinned to CPU 0 and the client to CPU 1. Every load is
# bounded by --duration and stops by itself; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need nginx:nginx varnishd:varnish wrk:wrk

cargo build --release --quiet
cargo build --release --quiet -p outpost-load --example bare_hyper --example sink_load
outpost=target/release/outpost
bare=target/release/examples/bare_hyper
if [ "${1:-}" = --pgo ]; then
  shift
  load-tests/bench/pgo.sh
  triple=$(rustc -vV | sed -n 's/^host: //p')
  outpost=target/pgo/$triple/release/outpost
  bare=target/pgo-bare/$triple/release/examples/bare_hyper
fi
# The client discards bodies in the kernel, so the server under test, not
# the client's copying, is what a run measures (`--client wrk` for wrk).
exec python3 load-tests/bench/compare.py --outpost "$outpost" --bare "$bare" \
  --client target/release/examples/sink_load "$@"
