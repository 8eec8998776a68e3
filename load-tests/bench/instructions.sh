#!/usr/bin/env bash
# User-space instructions per cache hit, the Outpost edge against the bare
# hyper server, each under valgrind's callgrind (see instructions.py): a
# measure that does not move with the machine's noise, for changes of a few
# percent. Installs what it needs.
#
#   load-tests/bench/instructions.sh [--sizes 1KiB,100KiB] [--duration 4]
#                                    [--conns 32] [--top 25] [--cache]
#
# Outpost is built with rustix's libc backend in target/instructions:
# valgrind does not map the vDSO that rustix's own backend reads. Every load
# is bounded by --duration and stops by itself; all traffic stays on
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need valgrind:valgrind wrk:wrk

CARGO_TARGET_DIR=target/instructions RUSTFLAGS="--cfg rustix_use_libc" cargo build --release --quiet -p outpost
cargo build --release --quiet -p outpost-load --example bare_hyper
exec python3 load-tests/bench/instructions.py --outpost target/instructions/release/outpost \
  --bare target/release/examples/bare_hyper "$@"
