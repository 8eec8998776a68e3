#!/usr/bin/env bash
# A profile-guided release build of the edge, and of the bare hyper server
# so that the two still compare like with like: an instrumented build of each
# serves the benchmarks' own loads (cache hits of 1 KiB, 100 KiB and 1 MiB in
# cleartext and over TLS, full handshakes), then each is built again with the
# hot code laid out together and inlined by what ran. Installs what it needs.
#
#   load-tests/bench/pgo.sh [--duration 3]
#
# Leaves target/pgo/x86_64-unknown-linux-gnu/release/outpost and
# target/pgo-bare/x86_64-unknown-linux-gnu/release/examples/bare_hyper;
# run.sh --pgo builds with it and measures those. Every training load is bounded in time and stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=3
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# The profile's format is LLVM's own: llvm-profdata must be of the major
# version the compiler was built with.
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
. load-tests/bench/need.sh
need "llvm-profdata-$llvm:llvm-$llvm" nginx:nginx wrk:wrk openssl:openssl curl:curl

triple=$(rustc -vV | sed -n 's/^host: //p')
# The instrumented builds write their counts here, a path built into them:
# kept from run to run, so that cargo rebuilds only what changed.
raw=$PWD/target/pgo-profiles
rm -rf "$raw"
mkdir -p "$raw"
# With --target, RUSTFLAGS reach the binaries alone, not the build scripts
# and procedural macros run while building. Each server is built apart, so
# each is laid out by its own profile (both link hyper and tokio).
build() { # RUSTFLAGS, target dir, what to build
  local flags="$1" dir="$2"
  shift 2
  RUSTFLAGS="$flags" cargo build --release --locked --quiet --target "$triple" --target-dir "$dir" "$@"
}
edge=(-p outpost --bin outpost)
bare=(-p outpost-load --example bare_hyper)
# The load client, and a plain edge binary for the test origin and
# `outpost load`: their work is not the edge's, and kept out of its profile.
cargo build --release --locked --quiet -p outpost-load --example sink_load -p outpost --bin outpost
client=target/release/examples/sink_load
helper=target/release/outpost

build "-Cprofile-generate=$raw/edge" target/pgo-gen "${edge[@]}"
build "-Cprofile-generate=$raw/bare" target/pgo-gen-bare "${bare[@]}"
gen=target/pgo-gen/$triple/release
python3 load-tests/bench/compare.py --outpost "$gen/outpost" --bare "target/pgo-gen-bare/$triple/release/examples/bare_hyper" \
  --client "$client" --helper "$helper" --only outpost,hyper --repeats 1 --duration "$duration" --conns 64
python3 load-tests/bench/tls.py --outpost "$gen/outpost" --client "$client" --helper "$helper" \
  --loads hits,hits-100k,hits-1m,full --repeats 1 --duration "$duration"
declare -A profile
for which in edge bare; do
  ls "$raw/$which"/*.profraw >/dev/null
  "llvm-profdata-$llvm" merge -o "$raw/$which.profdata" "$raw/$which"/*.profraw
  # Named by its contents: cargo rebuilds what its flags name, and a
  # profile of the same name would leave the crates it compiled before as
  # they were laid out by the last one.
  sum=$(sha256sum "$raw/$which.profdata" | cut -c1-16)
  mv "$raw/$which.profdata" "$raw/$which-$sum.profdata"
  profile[$which]=$raw/$which-$sum.profdata
done

build "-Cprofile-use=${profile[edge]}" target/pgo "${edge[@]}"
build "-Cprofile-use=${profile[bare]}" target/pgo-bare "${bare[@]}"
echo "built target/pgo/$triple/release/outpost and target/pgo-bare/$triple/release/examples/bare_hyper"
