#!/usr/bin/env bash
# Builds target/debian/outpost_VERSION_ARCH.deb: the binary, the systemd
# units, man pages and shell completions generated from the binary, the
# logrotate snippet, the example node files and the monitoring assets.
# PROFILE=dev packages a debug build (CI does: it is already built);
# NO_BUILD=1 packages the binary already in target/ as it is. Extra
# arguments go to cargo-deb (e.g. --fast). Installs cargo-deb if missing
# (the version this script is written for).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
if ! command -v cargo-deb >/dev/null; then
  cargo install cargo-deb --version 3.8.0 --locked
fi
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --locked --profile "$profile" --bin outpost
fi
bin=target/$dir/outpost
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
"$bin" manpages "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/outpost.bash"
"$bin" completions zsh >"$assets/_outpost"
"$bin" completions fish >"$assets/outpost.fish"
cargo deb --no-build --profile "$profile" --strip "$@"
