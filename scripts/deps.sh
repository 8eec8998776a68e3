#!/usr/bin/env bash
# Installs, with apt-get, what building and testing Outpost needs beyond
# Rust: protoc (the etcd client's build compiles etcd's protocol files)
# and etcd (the store of a replicated control plane; the tests start real
# clusters on loopback, and set up users on them with etcdctl); nftables
# (the lab cuts links with it), dig and kdig (the DNS conformance checks, the
# README's examples) and curl. Run as root; does nothing when all is there.
set -euo pipefail
source "$(dirname "$0")/../load-tests/bench/need.sh"
need protoc:protobuf-compiler etcd:etcd-server etcdctl:etcd-client nft:nftables dig:dnsutils kdig:knot-dnsutils curl:curl \
  man:man-db nroff:groff-base
