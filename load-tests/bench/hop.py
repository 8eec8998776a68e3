#!/usr/bin/env python3
"""The hop between tiers: edges in front of one shield in front of the test
origin, every request a miss at both tiers (a URL never asked before, 1 KiB,
stored at each), with the edge speaking HTTP/2 to the shield (the default)
or HTTP/1.1 (`http2 = false`). Edges and shield run on CPU 0, the origin
and wrk on CPU 1. Reports, per edge, the medians of interleaved runs:
requests per second, p50 and p99 (ms), and the CPU each miss costs the edge
and the shield (microseconds).

--baseline BIN adds another build's edges (`before`, both hops) in front of
the same shield, to measure a change to the edge's upstream client.
"""
import os
import shutil
import signal
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import HOST, arguments, cpu_seconds, get, start, start_origin, stop, wrk, write_site  # noqa: E402

SHIELD = 18090
EDGES = {"http2": 18091, "http1": 18092, "before http2": 18093, "before http1": 18094}


def node(work, name, role, port, rest):
    path = os.path.join(work, f"{name}.toml")
    where = 'pop = "bench"\nlatitude = 0.0\nlongitude = 0.0\n' if role == "edge" else ""
    open(path, "w").write(f"""
[node]
name = "{name}"
role = "{role}"
{where}sites = ["bench.site.toml"]
access_log = "off"
[listen]
http = ["127.0.0.1:{port}"]
[cache]
memory = "512MiB"
{rest}""")
    return path


def script(work, run):
    """A wrk script that asks for a new URL each request, under `run`'s own
    prefix, so no run finds what another stored."""
    path = os.path.join(work, f"{run}.lua")
    open(path, "w").write(f"""
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/bench/hop/{run}/" .. n .. "?size=1KiB&cc=public,%20max-age%3D3600")
end
""")
    return path


def main():
    ap = arguments(duration=6)
    ap.add_argument("--baseline", help="another outpost build, whose edges run beside as `before`")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="outpost-hop-bench-")
    write_site(work)
    env = dict(os.environ, RUST_LOG="warn")
    origin = start_origin(args.outpost)
    procs = []
    try:
        shield = start("shield", [args.outpost, "shield", "--config", node(work, "shield", "shield", SHIELD, "")],
                       SHIELD, env=env)
        procs.append(shield)
        edges = {}
        for name, port in EDGES.items():
            binary = args.baseline if name.startswith("before") else args.outpost
            if not binary:
                continue
            rest = f'[upstream]\nshields = ["http://127.0.0.1:{SHIELD}"]\nhttp2 = {str("http2" in name).lower()}\n'
            conf = node(work, f"edge-{name.replace(' ', '-')}", "edge", port, rest)
            edges[name] = start(name, [binary, "edge", "--config", conf], port, env=env)
            procs.append(edges[name])
        for name in edges:  # a first request opens each edge's connection to the shield
            get(f"http://127.0.0.1:{EDGES[name]}/bench/hop/warm/{name.replace(' ', '-')}?size=1KiB")
        runs = {name: [] for name in edges}
        names = list(edges)
        for r in range(args.repeats):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                run = f"r{r}-{name.replace(' ', '-')}"
                before = (cpu_seconds(edges[name].pid), cpu_seconds(shield.pid))
                reqs, rps, p50, p99 = wrk(f"http://127.0.0.1:{EDGES[name]}/", args.duration, args.connections,
                                          extra=("-s", script(work, run)))
                edge_cpu = cpu_seconds(edges[name].pid) - before[0]
                shield_cpu = cpu_seconds(shield.pid) - before[1]
                runs[name].append((rps, p50, p99, edge_cpu / reqs * 1e6, shield_cpu / reqs * 1e6))
                print(f"{name:<13} " + "  ".join(f"{v:.3f}" for v in runs[name][-1]), flush=True)
    finally:
        for p in procs:
            stop(p)
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n1 KiB misses at edge and shield, {args.connections} connections, {args.duration} s, "
          f"medians of {args.repeats} interleaved runs")
    print("| edge → shield | req/s | p50 ms | p99 ms | edge CPU µs/miss | shield CPU µs/miss |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        med = [statistics.median(r[i] for r in rs) for i in range(5)]
        print(f"| {name} | {med[0]:,.0f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.1f} | {med[4]:.1f} |")


if __name__ == "__main__":
    main()
