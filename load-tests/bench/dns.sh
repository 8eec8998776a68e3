#!/usr/bin/env bash
# DNS throughput: dnsperf against `outpost dns`, nsd and gdnsd, each server
# pinned to CPU 0 and dnsperf to CPU 1.
#
#   outpost  plain   A query, no EDNS Client Subnet
#   outpost  ECS     the same with ECS 81.2.69.0/24 (London, in the sample
#                    geo-IP database: answered from fra)
#   nsd      plain   a static zone with the same records: the upper bound
#                    for an authoritative server
#   gdnsd    plain   plugin_geoip in city auto mode (nearest PoP by
#   gdnsd    ECS     coordinates) over the same PoPs and the same database
#
# Three interleaved rounds: each round runs every server and query kind
# once, in the same order, so drift on the machine falls on all alike. For
# each run: queries per second and lost queries (dnsperf), the server's CPU
# time (utime + stime from /proc, summed over its threads and child
# processes) and queries answered per CPU-second. Prints the medians as a
# Markdown table, then Outpost's ratios to nsd (plain) and to gdnsd (same
# query kind).
#
# Installs dnsperf, nsd and gdnsd if missing; runs its own instances on
# 127.0.0.1 (outpost 15353, nsd 15354, gdnsd 15355) from a temporary
# directory and stops them on exit. Bounded: each run lasts [seconds]
# (default 10) and stops by itself; traffic stays on 127.0.0.1.
#
#   load-tests/bench/dns.sh [seconds]
#
# OUTPOST_BIN=path measures that binary instead of building
# target/release/outpost.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-10}"
rounds=3
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [seconds]" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs: one for the server, one for dnsperf" >&2; exit 1; }
. load-tests/bench/need.sh
need dnsperf:dnsperf nsd:nsd gdnsd:gdnsd dig:bind9-dnsutils
if [ -z "${OUTPOST_BIN:-}" ]; then
  cargo build --release --quiet
  OUTPOST_BIN=target/release/outpost
fi
[ -x "$OUTPOST_BIN" ] || { echo "no outpost binary at $OUTPOST_BIN" >&2; exit 1; }

# ECS option 8: IPv4, source /24, scope 0, 81.2.69.0 (London).
ecs_option=8:00011800510245
declare -A port=([outpost]=15353 [nsd]=15354 [gdnsd]=15355)
declare -A pid=()
tick=$(getconf CLK_TCK)

work=$(mktemp -d)
# running PID...: whether any of them is still running (not a zombie).
running() {
  local p stat
  for p in "$@"; do
    stat=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    [ "$(cut -d' ' -f1 <<< "${stat##*) }")" != Z ] && return 0
  done
  return 1
}
# On exit: SIGTERM to each server (nsd stops and reaps its own children),
# then, after 5 s, SIGKILL to whatever of them is left.
cleanup() {
  local p all=() _
  for p in "${pid[@]}"; do
    all+=($(tree "$p"))
  done
  if [ ${#all[@]} -gt 0 ]; then
    kill "${pid[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
      running "${all[@]}" || break
      sleep 0.1
    done
    for p in "${all[@]}"; do
      if running "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    done
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "error: $*" >&2
  exit 1
}

# tree PID: PID and all its descendants.
tree() {
  local todo=("$1") p
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[-1]}
    unset 'todo[-1]'
    echo "$p"
    todo+=($(cat /proc/"$p"/task/*/children 2>/dev/null))
  done
}

# cpu_ticks PID: utime + stime of PID and its descendants, in clock ticks.
# A process's /proc/PID/stat counts all its threads.
cpu_ticks() {
  local total=0 p stat f
  for p in $(tree "$1"); do
    stat=$(cat /proc/"$p"/stat 2>/dev/null) || continue
    read -r -a f <<< "${stat##*) }"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# The Debian packages may have started system-wide nsd or gdnsd (on port
# 53): stop them, so that nothing but the instances below serves or takes
# CPU time.
for svc in nsd gdnsd; do
  if pgrep -x "$svc" >/dev/null; then
    if [ -d /run/systemd/system ]; then
      systemctl stop "$svc" || true
    else
      service "$svc" stop >/dev/null 2>&1 || true
    fi
    if pgrep -x "$svc" >/dev/null; then
      echo "warning: a $svc not started by this script is running" >&2
    fi
  fi
done
for name in outpost nsd gdnsd; do
  if command -v ss >/dev/null && [ -n "$(ss -Hlun "sport = :${port[$name]}")" ]; then
    fail "UDP port ${port[$name]} (for $name) is already in use"
  fi
done

printf 'example.cdn.example.test A\n' > "$work/queries"

# outpost: three PoPs, answers from the nearest to the client (the ECS
# address if any, else the source address: 127.0.0.1, unknown, so fra).
mkdir "$work/outpost"
cp config/geoip/sample.mmdb "$work/outpost/geo.mmdb"
cat > "$work/outpost/dns.toml" <<TOML
[node]
name = "dns-bench"
role = "dns"
[listen]
dns = "127.0.0.1:${port[outpost]}"
[dns]
zone = "cdn.example.test."
geoip = "geo.mmdb"
default_pop = "fra"
sites = ["example"]
# One client asks the same name again and again: no response-rate limit,
# as nsd's is turned off below (gdnsd has none).
rate_limit = 0
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

# nsd: the fra answer as a static zone; one server process, no remote
# control, no privilege drop or chroot, all state in the work directory.
# Minimal responses, like the others: no NS records in the authority
# section. No response rate limiting (on by default, at 200 qps a source).
mkdir "$work/nsd"
cat > "$work/nsd/cdn.example.test.zone" <<'ZONE'
$ORIGIN cdn.example.test.
$TTL 30
@        SOA  ns1 hostmaster 1 3600 600 86400 30
@        NS   ns1
ns1      A    127.0.0.1
example  A    127.0.0.11
example  A    127.0.0.21
ZONE
cat > "$work/nsd/nsd.conf" <<CONF
server:
  ip-address: 127.0.0.1@${port[nsd]}
  do-ip6: no
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$work/nsd"
  database: ""
  zonelistfile: "$work/nsd/zone.list"
  xfrdfile: "$work/nsd/xfrd.state"
  xfrdir: "$work/nsd"
  pidfile: "$work/nsd/nsd.pid"
  logfile: "$work/nsd/nsd.log"
  minimal-responses: yes
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: "cdn.example.test."
  zonefile: "cdn.example.test.zone"
CONF

# gdnsd: plugin_geoip in city auto mode over the same PoPs; the datacenter
# order (fra first) is the answer for clients without a location, as
# outpost's default_pop. One UDP and one TCP thread, for one core.
mkdir -p "$work/gdnsd/zones" "$work/gdnsd/geoip"
cat > "$work/gdnsd/config" <<CONF
options => {
  listen => [ 127.0.0.1:${port[gdnsd]} ]
  udp_threads => 1
  tcp_threads => 1
  edns_client_subnet => true
  run_dir => $work/gdnsd/run
  state_dir => $work/gdnsd/state
}
plugins => {
  geoip => {
    maps => {
      pops => {
        geoip2_db => geo.mmdb
        datacenters => [ fra, iad, sin ]
        auto_dc_coords => {
          fra => [ 50.11, 8.68 ]
          iad => [ 38.95, -77.45 ]
          sin => [ 1.35, 103.99 ]
        }
      }
    }
    resources => {
      example => {
        map => pops
        dcmap => {
          fra => [ 127.0.0.11, 127.0.0.21 ]
          iad => 127.0.0.12
          sin => 127.0.0.13
        }
      }
    }
  }
}
CONF
cat > "$work/gdnsd/zones/cdn.example.test" <<'ZONE'
$TTL 30
@        SOA  ns1 hostmaster 1 3600 600 86400 30
@        NS   ns1
ns1      A    127.0.0.1
example  DYNA geoip!example
ZONE
cp config/geoip/sample.mmdb "$work/gdnsd/geoip/geo.mmdb"

# Each server on CPU 0, its log in the work directory.
RUST_LOG=warn taskset -c 0 "$OUTPOST_BIN" dns --config "$work/outpost/dns.toml" > "$work/outpost.log" 2>&1 &
pid[outpost]=$!
taskset -c 0 nsd -d -c "$work/nsd/nsd.conf" > "$work/nsd.log" 2>&1 &
pid[nsd]=$!
taskset -c 0 gdnsd -c "$work/gdnsd" start > "$work/gdnsd.log" 2>&1 &
pid[gdnsd]=$!

# answers PORT [DIG OPTIONS]: the A records for the bench name, sorted, on
# one line.
answers() {
  local p=$1
  shift
  dig @127.0.0.1 -p "$p" +short +time=1 +tries=2 "$@" example.cdn.example.test A 2>/dev/null | sort | xargs
}

# expect NAME WANT [DIG OPTIONS]: NAME answers exactly the records WANT.
expect() {
  local name=$1 want=$2 got
  shift 2
  got=$(answers "${port[$name]}" "$@")
  [ "$got" = "$want" ] || fail "$name ${*:-(no ECS)}: answered '$got', expected '$want'"
}

# expect_ecs NAME: NAME echoes the ECS option with a non-zero scope, so it
# used the client subnet.
expect_ecs() {
  dig @127.0.0.1 -p "${port[$1]}" +time=1 +tries=2 +subnet=81.2.69.0/24 example.cdn.example.test A \
    | grep -Eq 'CLIENT-SUBNET: 81\.2\.69\.0/24/([1-9]|[12][0-9]|3[0-2])$' \
    || fail "$1: no ECS option with a non-zero scope in the answer to an ECS query"
}

for name in outpost nsd gdnsd; do
  for _ in $(seq 50); do
    kill -0 "${pid[$name]}" 2>/dev/null || break
    [ -n "$(answers "${port[$name]}")" ] && break
    sleep 0.2
  done
  if ! kill -0 "${pid[$name]}" 2>/dev/null || [ -z "$(answers "${port[$name]}")" ]; then
    logs=("$work/$name.log")
    [ "$name" = nsd ] && logs+=("$work/nsd/nsd.log")
    tail -n 20 "${logs[@]}" 2>/dev/null | sed 's/^/  /' >&2
    fail "$name did not start on 127.0.0.1:${port[$name]}"
  fi
done
fra="127.0.0.11 127.0.0.21"
for name in outpost gdnsd; do
  expect "$name" "$fra"
  expect "$name" "$fra" +subnet=81.2.69.0/24        # London
  expect "$name" 127.0.0.12 +subnet=8.8.8.0/24      # Mountain View
  expect "$name" 127.0.0.13 +subnet=202.12.27.0/24  # Tokyo
  expect_ecs "$name"
done
expect nsd "$fra"
echo "all three answer as expected; $rounds rounds of ${seconds} s runs"
echo "outpost $OUTPOST_BIN, nsd $(dpkg-query -W -f='${Version}' nsd)," \
  "gdnsd $(dpkg-query -W -f='${Version}' gdnsd), dnsperf $(dpkg-query -W -f='${Version}' dnsperf)"

results="$work/results.tsv"
# run NAME KIND ROUND: one dnsperf run, appended to $results.
run() {
  local name=$1 kind=$2 round=$3 extra=() before after out qps lost completed resp
  [ "$kind" = ecs ] && extra=(-E "$ecs_option")
  kill -0 "${pid[$name]}" 2>/dev/null || fail "$name has exited"
  before=$(cpu_ticks "${pid[$name]}")
  out=$(timeout $((seconds + 30)) taskset -c 1 dnsperf -s 127.0.0.1 -p "${port[$name]}" -d "$work/queries" \
    -l "$seconds" -c 8 -T 1 -q 500 "${extra[@]}" 2>&1) || fail "dnsperf against $name failed: $(tail -n 5 <<< "$out")"
  after=$(cpu_ticks "${pid[$name]}")
  qps=$(awk '/Queries per second/ {print $4}' <<< "$out")
  lost=$(awk '/Queries lost/ {print $3}' <<< "$out")
  completed=$(awk '/Queries completed/ {print $3}' <<< "$out")
  resp=$(awk '/Average packet size/ {print $NF}' <<< "$out")
  [ -n "$qps" ] && [ -n "$lost" ] && [ -n "$completed" ] || fail "no statistics from dnsperf: $(tail -n 5 <<< "$out")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$qps" "$lost" "$completed" "$((after - before))" "${resp:-0}" >> "$results"
  awk -v r="$round" -v n="$name" -v k="$kind" -v q="$qps" -v l="$lost" -v t="$((after - before))" -v hz="$tick" \
    'BEGIN { printf "round %d  %-7s %-5s %10.0f qps  lost %7d  CPU %6.2f s\n", r, n, k, q, l, t / hz }'
}

for round in $(seq "$rounds"); do
  run outpost plain "$round"
  run outpost ecs "$round"
  run nsd plain "$round"
  run gdnsd plain "$round"
  run gdnsd ecs "$round"
done

echo
python3 - "$results" "$tick" "$rounds" <<'PY'
import statistics
import sys

path, tick, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for line in open(path):
    name, kind, qps, lost, done, ticks, resp = line.split("\t")
    cpu = int(ticks) / tick
    runs.setdefault((name, kind), []).append(
        (float(qps), int(lost), cpu, int(done) / cpu if cpu > 0 else float("nan"), int(resp)))
med = {key: [statistics.median(r[i] for r in rs) for i in range(5)] for key, rs in runs.items()}

label = {"plain": "plain", "ecs": "ECS /24"}
print(f"Medians of {rounds} runs; server on CPU 0, dnsperf on CPU 1.\n")
print("| server | query | qps | lost | CPU s | queries/CPU-s | response B |")
print("|---|---|---:|---:|---:|---:|---:|")
for (name, kind), (qps, lost, cpu, per_cpu, resp) in med.items():
    print(f"| {name} | {label[kind]} | {qps:,.0f} | {lost:,.0f} | {cpu:.2f} | {per_cpu:,.0f} | {resp:.0f} |")

print()
print("| outpost vs | query | qps ratio | queries/CPU-s ratio |")
print("|---|---|---:|---:|")
for other, okind, kind in (("nsd", "plain", "plain"), ("nsd", "plain", "ecs"),
                           ("gdnsd", "plain", "plain"), ("gdnsd", "ecs", "ecs")):
    o, x = med[("outpost", kind)], med[(other, okind)]
    print(f"| {other} ({label[okind]}) | {label[kind]} | {o[0] / x[0]:.2f}x | {o[3] / x[3]:.2f}x |")
PY
