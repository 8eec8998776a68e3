#!/usr/bin/env python3
"""HTTP/1.1, HTTP/2 and HTTP/3 to one Outpost edge, in one run: 1 KiB hits
over keep-alive connections (TLS for the first two, QUIC for the third),
loaded by `outpost load` with the same scenario but for the protocol, the
protocols taking turns run by run. The edge runs on CPU 0 and the load on
CPU 1. Reports the medians of the repeats: requests per second, p50 and p99
(ms), the edge's CPU seconds and requests per CPU-second, and each
protocol's ratios to HTTP/1.1.

The load generator shares one core: where it, not the edge, is the limit
(HTTP/3's client does its own encryption and loss recovery in user space),
requests per second say more about the client than about the edge, and
requests per CPU-second of the edge are the figure to compare.
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
from compare import (HOST, SITE_TLS, arguments, cpu_seconds, edge_toml, make_cert, start, start_origin, stop,  # noqa: E402
                     write_site)

PORT = 18443
PATH = "/bench/proto/{n}?size=1KiB&cc=public,%20max-age%3D3600"
PROTOCOLS = ["http1", "http2", "http3"]


def configs(work):
    make_cert(work, f"DNS:{HOST}")
    write_site(work, extra=SITE_TLS)
    edge = os.path.join(work, "edge.toml")
    listen = f'https = ["127.0.0.1:{PORT}"]\nquic = ["127.0.0.1:{PORT}"]'
    open(edge, "w").write(edge_toml(listen, 'memory = "256MiB"'))
    return edge


def check(m, protocol):
    """The run's metrics, unless requests failed: a broken run is no figure."""
    if m["http_req_failed"]["fails"]:
        sys.exit(f"{protocol}: {m['http_req_failed']['fails']} of {m['http_reqs']['count']} requests failed")
    return m


def load(binary, work, protocol, seconds, vus):
    """One `outpost load` run on CPU 1; its JSON metrics."""
    scenario, out = os.path.join(work, "proto.toml"), os.path.join(work, "proto.json")
    open(scenario, "w").write(f"""
[target]
urls = ["https://127.0.0.1:{PORT}"]
host = "{HOST}"
server_name = "{HOST}"
insecure_skip_tls_verify = true
http2 = {"true" if protocol == "http2" else "false"}
http3 = {"true" if protocol == "http3" else "false"}
[executor]
type = "constant-vus"
vus = {vus}
duration = "{seconds}s"
[requests]
path = "{PATH}"
objects = 100
""")
    subprocess.run(["taskset", "-c", "1", binary, "load", scenario, "--quiet", "--out", f"json={out}"], check=True,
                   capture_output=True, timeout=seconds + 60)
    return json.load(open(out))["metrics"]


def main():
    args = arguments().parse_args()
    work = tempfile.mkdtemp(prefix="outpost-proto-bench-")
    edge_file = configs(work)
    origin = start_origin(args.outpost)
    edge = start("outpost", [args.outpost, "edge", "--config", edge_file], PORT, env=dict(os.environ, RUST_LOG="warn"))
    runs = {p: [] for p in PROTOCOLS}
    try:
        for p in PROTOCOLS:  # fill the cache, once per protocol
            check(load(args.outpost, work, p, 1, 4), p)
        for _ in range(args.repeats):
            for p in PROTOCOLS:
                before = cpu_seconds(edge.pid)
                m = check(load(args.outpost, work, p, args.duration, args.connections), p)
                cpu = cpu_seconds(edge.pid) - before
                d = m["http_req_duration_ms"]
                reqs = m["http_reqs"]["count"]
                failed = m["http_req_failed"]["fails"]
                runs[p].append((m["http_reqs"]["rate"], d["med"], d["p99"], cpu, reqs / cpu if cpu else 0.0, failed))
                print(f"{p:<6} " + "  ".join(f"{v:.3f}" for v in runs[p][-1]), flush=True)
    finally:
        stop(edge)
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    med = {p: [statistics.median(r[i] for r in rs) for i in range(6)] for p, rs in runs.items()}
    print(f"\n1 KiB hits, {args.connections} connections, {args.duration} s, medians of {args.repeats} interleaved runs")
    print("| protocol | req/s | p50 ms | p99 ms | edge CPU-s | req/CPU-s | failed | req/CPU-s / HTTP/1.1 |")
    print("|---|---|---|---|---|---|---|---|")
    for p in PROTOCOLS:
        rps, p50, p99, cpu, per_cpu, failed = med[p]
        ratio = per_cpu / med["http1"][4] if med["http1"][4] else 0.0
        print(f"| {p} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.2f} | {per_cpu:,.0f} | {failed:.0f} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
