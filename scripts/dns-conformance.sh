#!/usr/bin/env bash
# EDNS compliance checks in the manner of ISC's ednscomp (the probes of
# https://ednscomp.isc.org's genreport, written from RFC 6891, 3225, 7871
# and 1035), run with dig and with kdig against an authoritative server:
#
#   scripts/dns-conformance.sh SERVER PORT ZONE NAME
#
# ZONE is the zone the server is authoritative for; NAME a name in it that
# has an A record. Prints one line per check and exits non-zero if any
# fails. Needs dig (dnsutils) and kdig (knot-dnsutils): scripts/deps.sh.
set -uo pipefail

server=$1 port=$2 zone=$3 name=$4
failed=0
for tool in dig kdig; do
  command -v "$tool" >/dev/null || { echo "needs $tool: sudo scripts/deps.sh (dnsutils, knot-dnsutils)"; exit 2; }
done

# check TOOL LABEL "EXPECTED REGEXES (;-separated)" "FORBIDDEN REGEXES" ARGS...
check() {
  local tool=$1 label=$2 want=$3 deny=$4
  shift 4
  local out
  if [ "$tool" = dig ]; then
    out=$(dig @"$server" -p "$port" +norec +time=2 +tries=1 "$@" 2>&1)
  else
    out=$(kdig @"$server" -p "$port" +norec +time=2 +retry=0 "$@" 2>&1)
  fi
  local ok=1 pattern
  IFS=';' read -ra wants <<<"$want"
  for pattern in "${wants[@]}"; do
    [ -z "$pattern" ] && continue
    grep -Eq -- "$pattern" <<<"$out" || { ok=0; echo "    missing: $pattern"; }
  done
  IFS=';' read -ra denies <<<"$deny"
  for pattern in "${denies[@]}"; do
    [ -z "$pattern" ] && continue
    if grep -Eq -- "$pattern" <<<"$out"; then ok=0; echo "    present: $pattern"; fi
  done
  if [ $ok = 1 ]; then
    echo "ok   $tool $label"
  else
    echo "FAIL $tool $label ($*)"
    sed 's/^/    | /' <<<"$out"
    failed=1
  fi
}

# dig: plain DNS, then EDNS as genreport probes it.
check dig dns "status: NOERROR;flags: qr aa;IN[[:space:]]+SOA" "EDNS:" +noedns "$zone" SOA
check dig edns "status: NOERROR;EDNS: version: 0;IN[[:space:]]+SOA" "" +edns=0 +nocookie "$zone" SOA
check dig edns1 "status: BADVERS;EDNS: version: 0" "ANSWER: [1-9]" +edns=1 +noednsneg +nocookie "$zone" SOA
check dig edns@512 "status: NOERROR;EDNS: version: 0" "" +edns=0 +dnssec +bufsize=512 +ignore +nocookie "$zone" DNSKEY
check dig ednsopt "status: NOERROR;EDNS: version: 0" "OPT=100" +edns=0 +nocookie +ednsopt=100 "$zone" SOA
check dig edns1opt "status: BADVERS;EDNS: version: 0" "OPT=100" +edns=1 +noednsneg +nocookie +ednsopt=100 "$zone" SOA
check dig do "status: NOERROR;EDNS: version: 0, flags: do" "" +edns=0 +nocookie +dnssec "$zone" SOA
check dig ednsflags "status: NOERROR;EDNS: version: 0" "MBZ: " +edns=0 +nocookie +ednsflags=0x80 "$zone" SOA
check dig optlist "status: NOERROR;EDNS: version: 0" "OPT=100" +edns=0 +nsid +expire +cookie +subnet=0.0.0.0/0 "$zone" SOA
check dig ednstcp "status: NOERROR;EDNS: version: 0" "" +tcp +edns=0 +nocookie "$zone" SOA
# The answers themselves.
check dig a "status: NOERROR;flags: qr aa;IN[[:space:]]+A[[:space:]]" "" "$name" A
check dig subnet "status: NOERROR;CLIENT-SUBNET: 81.2.69.0/24/[0-9]+" "" +subnet=81.2.69.0/24 "$name" A
check dig nxdomain "status: NXDOMAIN;flags: qr aa;IN[[:space:]]+SOA" "" "nope-$RANDOM.$zone" A
check dig refused "status: REFUSED" "flags: qr aa" example.invalid. A
check dig chaos "status: REFUSED" "flags: qr aa" -c CH "$name" TXT
check dig axfr "Transfer failed|REFUSED" "XFR size: [1-9]" "$zone" AXFR

# kdig, a second implementation, on the same points.
check kdig edns "status: NOERROR;EDNS PSEUDOSECTION;Version: 0" "" +edns=0 "$zone" SOA
check kdig edns1 "status: BADVERS;Version: 0" "" +edns=1 "$zone" SOA
check kdig do "status: NOERROR;flags: do" "" +dnssec "$zone" SOA
check kdig subnet "status: NOERROR;CLIENT-SUBNET: 81.2.69.0/24/[0-9]+" "" +subnet=81.2.69.0/24 "$name" A
check kdig tcp "status: NOERROR;Version: 0" "" +tcp +edns=0 "$zone" SOA
check kdig nxdomain "status: NXDOMAIN" "" "nope-$RANDOM.$zone" A

exit $failed
