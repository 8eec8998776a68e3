#!/usr/bin/env python3
"""Compressed text hits: the Outpost edge against nginx, in one run.

Every server sits in front of the same test origin, which serves a
JavaScript file of --size without compressing it (real text: Python's
standard library sources, concatenated); the client (pinned to CPU 1: wrk,
or with --client target/release/examples/sink_load the benchmarks' client,
which discards bodies in the kernel where wrk copies them) asks for it with
`Accept-Encoding: br, gzip`, as browsers do, and the server (pinned to CPU
0) answers from its cache:

- outpost: makes the brotli representation once and serves it from store;
- nginx-gz1, nginx-gz6: `proxy_cache` plus `gzip on` (gzip_comp_level 1,
  nginx's default, and 6, what tuning guides recommend): nginx stores the
  origin's bytes and compresses every response;
- nginx-static: the same text as a file with a `.gz` beside it (gzip -9)
  and `gzip_static on`: nginx sends the precompressed file with sendfile,
  no cache and no compression per request — a floor for nginx's cost.

Reports req/s, p99, requests per CPU-second of the server and bytes sent
per response (heads and chunk framing included, as the client counts
them), medians of interleaved repeats, and Outpost's ratios.
"""
import glob
import gzip
import os
import subprocess
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import (HOST, ORIGIN, arguments, cpu_seconds, edge_toml, nginx_conf, start, stop,  # noqa: E402
                     wait_port, write_site, wrk)

PORTS = {"outpost": 18080, "nginx-gz1": 18081, "nginx-gz6": 18087, "nginx-static": 18088}
ACCEPT = "br, gzip"


PATH = "/files/c/page.js"


def corpus(size):
    """`size` bytes of real text: Python's standard library, file by file."""
    out = bytearray()
    for f in sorted(glob.glob("/usr/lib/python3*/*.py")):
        out += open(f, "rb").read()
        if len(out) >= size:
            return bytes(out[:size])
    raise SystemExit(f"not {size} bytes of Python sources under /usr/lib")


def fetch(url, accept=None):
    headers = {"Host": HOST}
    if accept:
        headers["Accept-Encoding"] = accept
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read(), r.headers


def configs(work):
    write_site(work)
    edge = os.path.join(work, "edge.toml")
    open(edge, "w").write(edge_toml(f'http = ["127.0.0.1:{PORTS["outpost"]}"]', 'memory = "256MiB"'))
    confs = {}
    for level in (1, 6):
        name = f"nginx-gz{level}"
        sub = os.path.join(work, name)
        os.makedirs(sub)
        gz = (f"      gzip on;\n      gzip_comp_level {level};\n      gzip_types text/javascript application/javascript;\n"
              "      gzip_vary on;\n      gzip_proxied any;\n      gzip_min_length 1024;")
        confs[name] = nginx_conf(sub, f"127.0.0.1:{PORTS[name]}", location_extra=gz)
    static = os.path.join(work, "nginx-static")
    os.makedirs(static)
    location = f"""    location /files/ {{
      alias {work}/www/;
      gzip_static on;
      gzip_vary on;
    }}"""
    conf = nginx_conf(static, f"127.0.0.1:{PORTS['nginx-static']}", server_extra="    types { application/javascript js; }",
                      location=location)
    confs["nginx-static"] = conf
    return edge, confs


def main():
    ap = arguments()
    ap.add_argument("--size", default="100KiB")
    ap.add_argument("--client", default="wrk", help="the load client: wrk, or target/release/examples/sink_load")
    args = ap.parse_args()
    compare.CLIENT = None if args.client == "wrk" else args.client
    print(f"client: {args.client}", flush=True)
    work = tempfile.mkdtemp(prefix="outpost-compress-")
    size = int(args.size[:-3]) * {"KiB": 1 << 10, "MiB": 1 << 20}[args.size[-3:]]
    text = corpus(size)
    os.makedirs(os.path.join(work, "www", "c"))
    page = os.path.join(work, "www", "c", "page.js")
    open(page, "wb").write(text)
    open(page + ".gz", "wb").write(gzip.compress(text, 9))
    origin = subprocess.Popen(["taskset", "-c", "1", args.outpost, "origin", "--listen", f"{ORIGIN[0]}:{ORIGIN[1]}",
                               "--dir", os.path.join(work, "www")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(ORIGIN[1])
    try:
        edge, confs = configs(work)
        servers = {"outpost": [args.outpost, "edge", "--config", edge]}
        for name, conf in confs.items():
            servers[name] = ["nginx", "-c", conf, "-p", os.path.dirname(conf), "-g", "daemon off;"]
        env = dict(os.environ, RUST_LOG="warn")
        runs = {}
        names = list(servers)
        for round_no in range(args.repeats):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                proc = start(name, servers[name], PORTS[name], env=env)
                try:
                    url = f"http://127.0.0.1:{PORTS[name]}{PATH}"
                    for _ in range(3):
                        body, headers = fetch(url, ACCEPT)
                    coding = headers.get("Content-Encoding", "identity")
                    assert len(body) < len(text), f"{name} sent {len(body)} bytes ({coding})"
                    before = cpu_seconds(proc.pid)
                    reqs, rps, _, p99, read = wrk(url, args.duration, args.connections,
                                                  ["-H", f"Accept-Encoding: {ACCEPT}"], read=True)
                    cpu = cpu_seconds(proc.pid) - before
                    runs.setdefault(name, []).append((rps, p99, reqs / cpu if cpu > 0 else float("nan"), read / reqs))
                    print(f"{name:<12} round {round_no + 1}: {rps:>9.0f} req/s  p99 {p99:.3f} ms  {coding} "
                          f"{len(body)} bytes", flush=True)
                finally:
                    stop(proc)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: [statistics.median(r[i] for r in v) for i in range(4)] for k, v in runs.items()}
    print()
    print(f"{args.size} of JavaScript-like text, Accept-Encoding: {ACCEPT}, {args.connections} connections")
    print(f"{'server':<12} {'req/s':>9} {'p99 ms':>8} {'req/CPU-s':>10} {'bytes/resp':>10}")
    for name, (rps, p99, eff, per) in med.items():
        print(f"{name:<12} {rps:>9.0f} {p99:>8.3f} {eff:>10.0f} {per:>10.0f}")
    print()
    o = med["outpost"]
    for name in names[1:]:
        x = med[name]
        print(f"outpost/{name:<12} req/CPU-s {o[2] / x[2]:.2f}x   bytes/resp {o[3] / x[3]:.2f}x   p99 {o[1] / x[1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
