#!/usr/bin/env bash
# DNS throughput: dnsperf against `outpost dns` on one core, with and without
# an EDNS Client Subnet option. Installs dnsperf if missing. Bounded: each
# run lasts --seconds (default 10) and stops by itself; traffic stays on
# 127.0.0.1.
#
#   load-tests/bench/dns.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
. load-tests/bench/need.sh
need dnsperf:dnsperf
cargo build --release --quiet

work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
cp config/geoip/sample.mmdb "$work/geo.mmdb"
cat > "$work/dns.toml" <<TOML
[node]
name = "dns-bench"
role = "dns"
[listen]
dns = "127.0.0.1:15353"
[dns]
zone = "cdn.example.test."
geoip = "geo.mmdb"
default_pop = "fra"
sites = ["example"]
[[dns.pop]]
name = "fra"
latitude = 50.11
longitude = 8.68
edges = ["127.0.0.11", "127.0.0.21"]
[[dns.pop]]
name = "iad"
latitude = 38.95
longitude = -77.45
edges = ["127.0.0.12"]
[[dns.pop]]
name = "sin"
latitude = 1.35
longitude = 103.99
edges = ["127.0.0.13"]
TOML
printf 'example.cdn.example.test A\n' > "$work/queries"
RUST_LOG=warn taskset -c 0 target/release/outpost dns --config "$work/dns.toml" &
server=$!
sleep 1

run() {
  local label=$1; shift
  local out
  out=$(taskset -c 1 dnsperf -s 127.0.0.1 -p 15353 -d "$work/queries" -l "$seconds" -c 8 -T 1 -q 500 "$@" 2>&1)
  local qps lost
  qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
  lost=$(echo "$out" | awk '/Queries lost/ {print $3}')
  printf '%-28s %12s qps   lost %s\n' "$label" "$qps" "$lost"
}
# ECS option 8: IPv4, source /24, scope 0, 81.2.69.0 (London).
for i in 1 2 3; do
  run "A, no ECS (run $i)"
  run "A, ECS 81.2.69.0/24 (run $i)" -E 8:00011800510245
done
