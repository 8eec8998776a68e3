#!/usr/bin/env bash
# Memory per idle keep-alive connection: the Outpost edge against nginx and
# Varnish, each holding the same number of idle clients. Installs what it
# needs.
#
#   load-tests/bench/idle.sh [--idle 10000] [--repeats 3] [--batch 500 [--pause 2.5]] [--tls | --h2]
#
# All traffic stays on 127.0.0.1; every connection is closed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

. load-tests/bench/need.sh
need nginx:nginx varnishd:varnish

cargo build --release --quiet
exec python3 load-tests/bench/idle.py --outpost target/release/outpost "$@"
