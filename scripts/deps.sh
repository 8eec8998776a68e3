#!/usr/bin/env bash
# Installs, with apt-get, what building and testing Outpost needs beyond
# Rust: protoc (the etcd client's build compiles etcd's protocol files)
# and etcd (the store of a replicated control plane; the tests start real
# clusters on loopback, and set up users on them with etcdctl); nftables
# (the lab cuts links with it), dig and kdig (the DNS conformance checks, the
# README's examples), curl, man and groff (the man pages' test), Prometheus,
# Chromium with chromedriver (the console's tests drive a real browser), and
# Pebble (Let's Encrypt's test CA: the ACME tests order certificates from it).
# Run as root; does nothing when all is there.
set -euo pipefail
source "$(dirname "$0")/../load-tests/bench/need.sh"
need protoc:protobuf-compiler etcd:etcd-server etcdctl:etcd-client nft:nftables dig:dnsutils kdig:knot-dnsutils curl:curl \
  man:man-db nroff:groff-base
# Chromium, headless, and its WebDriver server; DejaVu so its screenshots
# have a font whatever else the machine lacks.
need chromium:chromium chromedriver:chromium-driver
need pebble:pebble
if [ ! -d /usr/share/fonts/truetype/dejavu ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
fi
# Prometheus and promtool: the alert rules' tests and the live check of the
# dashboard against `outpost up` (without the node exporter it recommends).
if ! command -v promtool >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The tests start their own; a packaged one would hold port 9090.
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# nginx: a real origin that compresses its own responses (the
# representations tests start one). Where the package starts the system's
# server on port 80, it is stopped: the tests start their own.
if ! command -v nginx >/dev/null; then
  need nginx:nginx
  (systemctl disable --now nginx || service nginx stop) >/dev/null 2>&1 || true
fi
# systemd-analyze (the package's units are verified) and docker-compose
# (the compose file is validated; it recommends a Docker daemon, not needed);
# fincore tells a test what the page cache holds of a file without reading it.
need systemd-analyze:systemd setpriv:util-linux fincore:util-linux-extra
if ! command -v docker-compose >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
