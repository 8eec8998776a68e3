#!/usr/bin/env python3
"""Disk-tier hits against memory-tier hits: the same Outpost build three
times, memory only (bodies in sealed memfds), with a disk tier and a memory
tier that holds the whole working set ("hybrid"), and with a disk tier and
a memory tier far too small for it ("disk": every head and body from the
disk tier), and nginx proxy_cache (its cache files in the page cache)
beside them, in one run.

The working set is --objects objects of --size each; wrk (pinned to CPU 1)
asks for them in a random order for --duration seconds, after every object
was fetched once. With --client target/release/examples/sink_load, the
benchmarks' client does (`--objects`), discarding bodies in the kernel: wrk
copies every body byte and fills its core first at 100 KiB. With --cold,
each object is asked for once, in a shuffled order (`sink_load --once`,
or a wrk script), and the load ends after the last. Reports req/s, p99
and requests per CPU-second of the server (pinned to CPU 0), medians of
interleaved repeats, and the ratios.
"""
import os
import shutil
import signal
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import (arguments, cpu_seconds, edge_toml, get, nginx_conf, start, start_origin, stop,  # noqa: E402
                     write_site, wrk)

PORTS = {"memory": 18085, "hybrid": 18087, "disk": 18086, "nginx": 18081}


def target(i, size):
    return f"/set/{i}?size={size}&cc=public,%20max-age%3D3600"


def configs(work, args):
    write_site(work)
    edges = {}
    for name, memory, disk in (("memory", "1GiB", None), ("hybrid", "1GiB", "2GiB"), ("disk", args.memory, "2GiB")):
        edges[name] = os.path.join(work, f"edge-{name}.toml")
        storage = f'memory = "{memory}"' + (f'\ndisk = "{disk}"\npath = "cache-{name}"' if disk else "")
        open(edges[name], "w").write(edge_toml(f'http = ["127.0.0.1:{PORTS[name]}"]', storage))
    script = os.path.join(work, "set.lua")
    open(script, "w").write(f"""
math.randomseed(7)
request = function()
  return wrk.format("GET", "/set/" .. math.random(0, {args.objects - 1}) .. "?size={args.size}&cc=public,%20max-age%3D3600")
end
""")
    if args.cold:
        # Every object once, in a shuffled order, then stop: each request
        # reads from the disk, not from what an earlier request brought in.
        open(script, "w").write(f"""
math.randomseed(7)
local order, n, done = {{}}, {args.objects}, 0
for i = 1, n do order[i] = i - 1 end
for i = n, 2, -1 do
  local j = math.random(1, i)
  order[i], order[j] = order[j], order[i]
end
local asked = 0
request = function()
  asked = asked + 1
  return wrk.format("GET", "/set/" .. order[(asked - 1) % n + 1] .. "?size={args.size}&cc=public,%20max-age%3D3600")
end
response = function()
  done = done + 1
  if done >= n then wrk.thread:stop() end
end
""")
    # Reading cold files, nginx's guides have the reads (and sendfile) done
    # by a thread pool, so a read from the disk does not stall the worker.
    extra = "      aio threads;" if args.cold else ""
    return nginx_conf(work, f"127.0.0.1:{PORTS['nginx']}", location_extra=extra), edges, script


def drop_page_cache():
    """Writes back and drops the kernel's clean page cache (root only):
    files are then read from the disk device again. Memfd bodies are not
    page cache and stay."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main():
    ap = arguments()
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--size", default="100KiB")
    ap.add_argument("--memory", default="8MiB", help="the small memory tier")
    ap.add_argument("--client", default="wrk", help="the load client: wrk, or target/release/examples/sink_load")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache after warming and ask for each object once: hits read from the disk")
    args = ap.parse_args()
    if args.client != "wrk":
        compare.CLIENT = args.client
    print(f"client: {args.client}", flush=True)
    work = tempfile.mkdtemp(prefix="outpost-disk-")
    nginx, edges, script = configs(work, args)
    origin = start_origin(args.outpost)
    servers = {
        "memory": [args.outpost, "edge", "--config", edges["memory"]],
        "hybrid": [args.outpost, "edge", "--config", edges["hybrid"]],
        "disk": [args.outpost, "edge", "--config", edges["disk"]],
        "nginx": ["nginx", "-c", nginx, "-p", work, "-g", "daemon off;"],
    }
    env = dict(os.environ, RUST_LOG="warn")
    runs = {}
    try:
        names = list(servers)
        for round_no in range(args.repeats):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                # A fresh cache each run: the disk edge's folder is reused, so
                # its second start recovers what the first stored.
                proc = start(name, servers[name], PORTS[name], env=env)
                try:
                    base = f"http://127.0.0.1:{PORTS[name]}"
                    for i in range(args.objects):
                        get(base + target(i, args.size))
                    if args.cold:
                        drop_page_cache()
                    before = cpu_seconds(proc.pid)
                    if compare.CLIENT:
                        reqs, rps, _, p99 = wrk(base + target("{n}", args.size), args.duration, args.connections,
                                                objects=args.objects, once=args.cold)
                    else:
                        reqs, rps, _, p99 = wrk(base + "/", args.duration, args.connections, ["-s", script])
                    cpu = cpu_seconds(proc.pid) - before
                    runs.setdefault(name, []).append((rps, p99, reqs / cpu if cpu > 0 else float("nan")))
                    print(f"{name:<7} round {round_no + 1}: {rps:>9.0f} req/s  p99 {p99:.3f} ms  {reqs} requests",
                          flush=True)
                finally:
                    stop(proc)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
    print()
    print(f"{args.objects} objects of {args.size}; the disk edge's memory tier is {args.memory}"
          + ("; page cache dropped, each object asked once" if args.cold else ""))
    # A cold run stops after its last object; wrk still divides by the
    # whole duration, so its req/s says nothing there (the client's would).
    print(f"{'server':<7} {'' if args.cold else 'req/s':>9} {'p99 ms':>8} {'req/CPU-s':>10}")
    for name, (rps, p99, eff) in med.items():
        print(f"{name:<7} {'' if args.cold else f'{rps:.0f}':>9} {p99:>8.3f} {eff:>10.0f}")
    print()
    for name in ("hybrid", "disk"):
        print(f"{name + '/memory':<14}req/CPU-s {med[name][2] / med['memory'][2]:.2f}x   "
              f"p99 {med[name][1] / med['memory'][1]:.2f}x")
    print(f"{'disk/nginx':<14}req/CPU-s {med['disk'][2] / med['nginx'][2]:.2f}x   p99 {med['disk'][1] / med['nginx'][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
