#!/usr/bin/env bash
# The package on this machine, as an operator gets it: builds the .deb
# (from the binary CI already built), installs it with dpkg -i, verifies
# the units with systemd-analyze, checks the man pages and completions,
# then starts an edge with its unit's own command line, as the unit's user,
# and checks it serves a hit. Purges the package on the way out. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "deploy/debian/check.sh needs root (dpkg -i)"; exit 1; }
if dpkg -s outpost >/dev/null 2>&1; then
  echo "an outpost package is already installed here; not touching it"
  exit 1
fi
PROFILE=${PROFILE:-dev} NO_BUILD=${NO_BUILD:-1} deploy/debian/build.sh --fast >/dev/null
deb=$(ls -t target/debian/outpost_*.deb | head -1)

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  dpkg --purge outpost >/dev/null 2>&1 || true
  rm -f /etc/outpost/ci-edge.toml /etc/outpost/ci-site.toml
  rmdir /etc/outpost 2>/dev/null || true
}
trap cleanup EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb" >/dev/null
id outpost
test "$(stat -c %U /var/lib/outpost)" = outpost
/usr/bin/outpost --version

echo "== systemd-analyze verify"
for role in edge shield dns control; do
  systemd-analyze verify "outpost-$role@ci.service"
done

echo "== man pages and completions"
for page in outpost outpost-edge outpost-purge outpost-sites-push; do
  man -w "$page" >/dev/null
done
bash -c 'source /usr/share/bash-completion/completions/outpost && complete -p outpost' >/dev/null

echo "== an edge from its unit's command line, as the unit's user"
origin=127.0.0.1:19581
edge=127.0.0.1:19580
/usr/bin/outpost origin --listen "$origin" 2>/dev/null &
pids+=($!)
cat >/etc/outpost/ci-site.toml <<SITE
[site]
id = "ci"
hosts = ["ci.test"]
[[origin]]
url = "http://$origin"
SITE
cat >/etc/outpost/ci-edge.toml <<NODE
[node]
name = "ci-edge"
role = "edge"
pop = "ci"
latitude = 0.0
longitude = 0.0
sites = ["ci-site.toml"]
access_log = "/var/log/outpost/ci-edge.log"
[listen]
http = ["$edge"]
[cache]
memory = "16MiB"
disk = "64MiB"
path = "/var/lib/outpost/ci-edge/cache"
[upstream]
mode = "origin"
NODE
chgrp outpost /etc/outpost/ci-*.toml
chmod 640 /etc/outpost/ci-*.toml
# What systemd would make: the unit's state directory, the user's own.
install -d -o outpost -g outpost -m 0750 /var/lib/outpost/ci-edge
command=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/outpost-edge@.service)
command=${command//%i/ci-edge}
echo "$command"
# shellcheck disable=SC2086
setpriv --reuid=outpost --regid=outpost --init-groups --inh-caps=-all $command 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null "http://$edge/" && break
  sleep 0.1
done
url="http://$edge/hello?size=1000&cc=max-age%3D600"
curl -sf -o /dev/null -H 'Host: ci.test' "$url"
status=$(curl -sf -D - -o /dev/null -H 'Host: ci.test' "$url" | tr -d '\r' | sed -n 's/^cache-status: //Ip')
echo "cache-status: $status"
case "$status" in
  "ci-edge; hit"*) ;;
  *) echo "the second request was not a hit"; exit 1 ;;
esac
test "$(stat -c %U /var/lib/outpost/ci-edge/cache)" = outpost
grep -q '"/hello' /var/log/outpost/ci-edge.log
echo "ok: the package installs, its units verify, and its edge serves a hit"
