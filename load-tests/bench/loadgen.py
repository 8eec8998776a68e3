#!/usr/bin/env python3
"""Is the load generator the bottleneck? `outpost load` and wrk, each on one
core (CPU 1), drive the same Outpost edge (CPU 0) with 1 KiB cache hits over
64 keep-alive connections for a fixed time. Reports the medians of the
repeats and the ratio of their request rates.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import HOST, PORTS, arguments, configs, get, start, start_origin, stop, wrk  # noqa: E402


def outpost_load(binary, work, seconds, conns, path):
    scenario = os.path.join(work, "hits.toml")
    open(scenario, "w").write(f"""
[target]
urls = ["http://127.0.0.1:{PORTS['outpost']}"]
host = "{HOST}"
[executor]
type = "constant-vus"
vus = {conns}
duration = "{seconds}s"
[requests]
path = "{path.split('?')[0]}?{path.split('?')[1]}"
""")
    out = os.path.join(work, "load.json")
    subprocess.run(["taskset", "-c", "1", binary, "load", "-q", "--out", f"json={out}", scenario],
                   check=True, capture_output=True, timeout=seconds + 60)
    m = json.load(open(out))["metrics"]
    return m["http_reqs"]["rate"], m["http_req_duration_ms"]["p99"]


def main():
    args = arguments(duration=8).parse_args()
    work = tempfile.mkdtemp(prefix="outpost-loadgen-")
    _, edge_conf = configs(work)
    origin = start_origin(args.outpost)
    edge = start("outpost", [args.outpost, "edge", "--config", edge_conf], PORTS["outpost"],
                 env=dict(os.environ, RUST_LOG="warn"))
    path = "/bench/loadgen?size=1KiB&cc=public,%20max-age%3D3600"
    url = f"http://127.0.0.1:{PORTS['outpost']}{path}"
    runs = {"wrk": [], "outpost load": []}
    try:
        for _ in range(3):
            get(url)
        for _ in range(args.repeats):
            _, rps, _, p99 = wrk(url, args.duration, args.connections)
            runs["wrk"].append((rps, p99))
            runs["outpost load"].append(outpost_load(args.outpost, work, args.duration, args.connections, path))
    finally:
        stop(edge)
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}
    for k, (rps, p99) in med.items():
        print(f"{k:<13} {rps:>10.0f} req/s   p99 {p99:.3f} ms   runs: {', '.join(f'{r[0]:.0f}' for r in runs[k])}")
    print(f"\noutpost load / wrk: {med['outpost load'][0] / med['wrk'][0]:.2f}x the request rate on one core")


if __name__ == "__main__":
    sys.exit(main())
