#!/usr/bin/env bash
# Checks the Prometheus assets: the scrape config and rules parse, and the
# rules' unit tests pass. (tests/it/observability.rs runs them against a
# live `outpost up`.)
set -euo pipefail
cd "$(dirname "$0")"
promtool check config prometheus.yml
promtool check rules rules.yml
promtool test rules rules.test.yml
python3 -c 'import json,sys; d=json.load(open("../grafana/outpost.json")); assert d["panels"], "no panels"' 2>/dev/null \
  || { echo "deploy/grafana/outpost.json is not a dashboard"; exit 1; }
