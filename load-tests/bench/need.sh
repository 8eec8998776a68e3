# Sourced by the benchmark scripts: `need COMMAND:PACKAGE ...` installs,
# with apt-get, the Debian packages whose commands are missing.
need() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Every script builds the workspace, whose etcd client compiles etcd's
# protocol files as it is built: on a machine that has not run
# scripts/deps.sh, that needs protoc first.
need protoc:protobuf-compiler
