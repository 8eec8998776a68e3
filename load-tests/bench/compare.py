#!/usr/bin/env python3
"""Runs the same cache-hit loads against nginx, Varnish and the Outpost edge.

Each server caches from the same test origin. For each object size and each
server: warm the cache, then run wrk (pinned to CPU 1) against the server
(pinned to CPU 0) for a fixed time, and read the server's CPU time from
/proc before and after. Reports req/s, p50, p99 and requests per CPU-second
(median of the repeats) and Outpost's ratios to the others. Repeats are
interleaved: each round runs every server once, in a rotating order, so a
noisy moment on the machine falls on all of them alike.

--bare BIN adds the bare hyper server (load-tests/examples/bare_hyper.rs) to
the 1 KiB runs: the floor of what a hyper-based server can do.

--baseline BIN adds another Outpost build (say, the previous commit's) as
"before", with the same configuration, to measure a change.

--client BIN runs the loads with BIN (load-tests/examples/sink_load.rs)
instead of wrk (run.sh does; `--client wrk` runs wrk). wrk copies every body byte into its buffer, 8 KiB a read:
from 100 KiB up it fills its core first (each run says so), and then the
client, not the server, sets req/s and latency. sink_load has the kernel
discard the bodies (`recv` with `MSG_TRUNC`), the rest of a hit as wrk.
"""
import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ORIGIN = ("127.0.0.1", 19000)
PORTS = {"outpost": 18080, "nginx": 18081, "varnish": 18082, "before": 18083, "hyper": 18084}
HOST = "bench.test"
TICK = os.sysconf("SC_CLK_TCK")
# The load client for plain GETs (`--client`); None: wrk.
CLIENT = None
# The certificate it trusts for HTTPS; without one, HTTPS loads run wrk.
CLIENT_CA = None


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port} after {timeout}s")


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


def start(name, cmd, port, env=None):
    # stderr goes to a file: a pipe nobody reads would stall a chatty server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=log,
                            env=env, start_new_session=True)
    try:
        wait_port(port)
    except SystemExit:
        proc.kill()
        log.seek(0)
        raise SystemExit(f"{name} did not start: {log.read().decode(errors='replace')[-2000:]}")
    return proc


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)


def get(url):
    req = urllib.request.Request(url, headers={"Host": HOST})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return dict(r.headers)


def wrk(url, seconds, conns, extra=(), read=False, objects=0, client=True, once=False):
    """Requests, req/s, p50 and p99 (ms); with `read`, also the bytes
    read (heads and bodies). With `objects` (the client only), `{n}` in the
    URL stands for a number below it, drawn for each request; with `once`
    as well, each number once, in a shuffled order, and the load ends
    after the last. The load runs
    on CLIENT when one is set, `client` is true and `extra` holds nothing
    but request fields (`-H`), and on wrk otherwise."""
    u = urllib.parse.urlsplit(url)
    if objects and not CLIENT:
        raise SystemExit("a set of objects needs --client")
    # The client takes request fields (`-H`); other wrk options need wrk.
    fields = [v for flag, v in zip(extra[::2], extra[1::2]) if flag == "-H"]
    if client and CLIENT and len(fields) * 2 == len(extra) and (u.scheme == "http" or CLIENT_CA):
        target = u.path + (f"?{u.query}" if u.query else "")
        cmd = ["taskset", "-c", "1", CLIENT, *(["--objects", str(objects)] if objects else []),
               *(["--once"] if once else []),
               *[a for f in fields for a in ("--header", f)],
               f"{u.hostname}:{u.port}", HOST, target, str(conns), str(seconds),
               *([CLIENT_CA] if u.scheme == "https" else [])]
    else:
        cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}",
               *extra, url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    out = done.stdout
    if not re.search(r"(\d+) requests in", out):
        raise SystemExit(f"{' '.join(cmd)} said nothing of its requests (exit {done.returncode}): {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds
    if busy >= 0.95:
        # One wrk thread on its one core is the most load there is here.
        print(f"  warning: {url}: the client used {busy:.0%} of its core: it, not the server, may set "
              "req/s and latency here")
    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        print(f"  warning: {url}: {errors.group(0) if errors else ''} {socket_errors.group(0) if socket_errors else ''}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if read:
        m = re.search(r"requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read", out)
        scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m.group(2)]
        return reqs, rps, ms("50"), ms("99"), float(m.group(1)) * scale
    return reqs, rps, ms("50"), ms("99")


def nginx_conf(work, listen, server_extra="", location_extra="", location=None):
    """nginx proxy_cache in front of the test origin, one worker; with
    `location`, that block in place of the proxy."""
    if location is None:
        location = f"""    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_valid 200 1h;
{location_extra}
    }}"""
    path = os.path.join(work, "nginx.conf")
    open(path, "w").write(f"""
worker_processes 1;
user root root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  # As nginx's own tuning guides have it: the kernel sends cached files;
  # nothing to batch on loopback.
  sendfile on;
  tcp_nopush off;
  # And for a hot cache: the cache files' descriptors kept open (proxy_cache
  # opens them through this cache), not opened, stat'ed and closed per hit.
  open_file_cache max=10000 inactive=60s;
  open_file_cache_valid 60s;
  keepalive_requests 1000000;
  proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=bench:16m max_size=1g inactive=1h use_temp_path=off;
  upstream origin {{ server {ORIGIN[0]}:{ORIGIN[1]}; keepalive 32; }}
  server {{
    listen {listen};
{server_extra}
{location}
  }}
}}
""")
    return path


def start_origin(binary):
    """The test origin, on CPU 1 with the load generator."""
    origin = subprocess.Popen(["taskset", "-c", "1", binary, "origin", "--listen", f"{ORIGIN[0]}:{ORIGIN[1]}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(ORIGIN[1])
    return origin


def edge_toml(listen, cache, extra=""):
    """An edge node file serving the bench site from the origin directly:
    `listen` and `cache` are the bodies of those sections, `extra` more
    sections."""
    return f"""
[node]
name = "edge-bench"
role = "edge"
pop = "bench"
latitude = 0.0
longitude = 0.0
sites = ["bench.site.toml"]
access_log = "off"
[listen]
{listen}
{extra}[cache]
{cache}
[upstream]
mode = "origin"
"""


def arguments(duration=10):
    """The options every bench script takes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--outpost", required=True, help="the outpost binary to measure")
    ap.add_argument("--duration", type=int, default=duration, help="seconds per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per server")
    ap.add_argument("--connections", type=int, default=64)
    return ap


def write_site(work, hosts=(HOST,), extra=""):
    """The bench site, which every edge node file names: `hosts`, and
    `extra` sections after the cache's."""
    names = ", ".join(f'"{h}"' for h in hosts)
    open(os.path.join(work, "bench.site.toml"), "w").write(f"""
[site]
id = "bench"
hosts = [{names}]
[[origin]]
url = "http://{ORIGIN[0]}:{ORIGIN[1]}"
[cache]
default_ttl = "1h"
{extra}""")


def make_cert(work, san):
    """A self-signed ECDSA P-256 certificate for HOST with the subject
    alternative names `san`, as cert.pem and key.pem in `work`."""
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-subj", f"/CN={HOST}", "-days", "30",
                    "-addext", f"subjectAltName={san}",
                    # A server's certificate, not a CA's (openssl's default
                    # here), so that a client may trust it as it is.
                    "-addext", "basicConstraints=critical,CA:FALSE"], check=True, capture_output=True)
    return cert, key


SITE_TLS = """[tls]
cert = "cert.pem"
key = "key.pem"
"""


def configs(work):
    nginx = nginx_conf(work, f"127.0.0.1:{PORTS['nginx']}",
                       location_extra="      add_header Cache-Status $upstream_cache_status;")
    write_site(work)
    edges = {}
    for name in ("outpost", "before"):
        edges[name] = os.path.join(work, f"edge-{name}.toml")
        open(edges[name], "w").write(edge_toml(f'http = ["127.0.0.1:{PORTS[name]}"]',
                                               f'memory = "256MiB"\ndisk = "1GiB"\npath = "edge-cache-{name}"'))
    return nginx, edges


SIZES = {"KiB": 1 << 10, "MiB": 1 << 20}


def size_bytes(size):
    return int(size[:-3]) * SIZES[size[-3:]]


def tcp_setting():
    """The kernel's TCP congestion control and loopback queueing, which
    change what a large response costs (BBR paces by timer on loopback,
    which has no fq qdisc): printed with every run, since runs under
    different settings do not compare."""
    def read(path):
        try:
            return open(path).read().strip()
        except OSError:
            return "?"
    try:
        qdisc = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout.split()
    except OSError:
        qdisc = []
    return (f"congestion control {read('/proc/sys/net/ipv4/tcp_congestion_control')}, "
            f"loopback qdisc {qdisc[1] if len(qdisc) > 1 else '?'}")


def main():
    ap = arguments()
    ap.add_argument("--sizes", default="1KiB,100KiB,1MiB")
    ap.add_argument("--conns", default="64,256", help="connection counts, each run for every size")
    ap.add_argument("--baseline", help="another outpost binary to run as 'before'")
    ap.add_argument("--bare", help="the bare hyper server (1 KiB floor): target/release/examples/bare_hyper")
    ap.add_argument("--client", default="wrk",
                    help="the load client: wrk, or target/release/examples/sink_load (run.sh's choice)")
    ap.add_argument("--only", help="run these servers alone, as outpost,hyper (pgo.sh's training)")
    ap.add_argument("--helper", help="the outpost binary that runs the test origin (default: --outpost); "
                                     "pgo.sh's, so that the origin's work is not counted in the edge's profile")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else list(PORTS)
    if unknown := set(only) - set(PORTS):
        raise SystemExit(f"--only: no server called {', '.join(sorted(unknown))}")
    global CLIENT
    CLIENT = None if args.client == "wrk" else args.client
    if os.cpu_count() < 2:
        raise SystemExit("needs two CPUs: one for the server, one for wrk")
    print(f"TCP: {tcp_setting()}; client: {CLIENT or 'wrk'}", flush=True)
    work = tempfile.mkdtemp(prefix="outpost-bench-")
    nginx_conf, edge_confs = configs(work)
    origin = start_origin(args.helper or args.outpost)
    servers = {
        "outpost": [args.outpost, "edge", "--config", edge_confs["outpost"]],
        "nginx": ["nginx", "-c", nginx_conf, "-p", work, "-g", "daemon off;"],
        "varnish": ["varnishd", "-F", "-j", "none", "-n", os.path.join(work, "varnish"), "-a", f"127.0.0.1:{PORTS['varnish']}",
                    "-b", f"{ORIGIN[0]}:{ORIGIN[1]}", "-s", "malloc,256m", "-p", "thread_pools=1"],
    }
    if args.baseline:
        servers["before"] = [args.baseline, "edge", "--config", edge_confs["before"]]
    env = dict(os.environ, RUST_LOG="warn")
    runs = {}
    cases = [(size, int(c)) for size in args.sizes.split(",") for c in args.conns.split(",")]
    try:
        for size, conns in cases:
            path = f"/bench/{size}?size={size}&cc=public,%20max-age%3D3600"
            case = dict(servers)
            if args.bare and size == "1KiB":
                case["hyper"] = [args.bare, f"127.0.0.1:{PORTS['hyper']}", str(size_bytes(size))]
            names = [n for n in case if n in only]
            if not names:
                continue
            for round_no in range(args.repeats):
                order = names[round_no % len(names):] + names[:round_no % len(names)]
                for name in order:
                    proc = start(name, case[name], PORTS[name], env=env)
                    try:
                        url = f"http://127.0.0.1:{PORTS[name]}{path}"
                        for _ in range(3):
                            get(url)
                        before = cpu_seconds(proc.pid)
                        reqs, rps, p50, p99 = wrk(url, args.duration, conns)
                        cpu = cpu_seconds(proc.pid) - before
                        runs.setdefault((size, conns, name), []).append(
                            (rps, p50, p99, reqs / cpu if cpu > 0 else float("nan")))
                        print(f"{size:>7} c{conns:<4} {name:<8} round {round_no + 1}: {rps:>10.0f} req/s  p99 {p99:.3f} ms",
                              flush=True)
                    finally:
                        stop(proc)
    finally:
        # Waited for: an instrumented origin writes its profile as it ends.
        stop(origin)
        shutil.rmtree(work, ignore_errors=True)
    report(runs, cases)


def report(runs, cases):
    """Medians of the repeats, then Outpost's ratios to every other server."""
    results = {k: [statistics.median(r[i] for r in v) for i in range(4)] for k, v in runs.items()}
    print()
    print(f"{'size':>7} {'conns':>5} {'server':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'req/CPU-s':>10}")
    for (size, conns, name), (rps, p50, p99, eff) in results.items():
        print(f"{size:>7} {conns:>5} {name:<8} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f} {eff:>10.0f}")
    print()
    for size, conns in cases:
        o = results.get((size, conns, "outpost"))
        if o is None:
            continue
        for other in ("nginx", "varnish", "hyper", "before"):
            if (size, conns, other) not in results:
                continue
            x = results[(size, conns, other)]
            print(f"{size:>7} c{conns:<4} outpost/{other:<8} req/CPU-s {o[3] / x[3]:.2f}x   req/s {o[0] / x[0]:.2f}x   "
                  f"p99 {o[2] / x[2]:.2f}x (lower is better)")


if __name__ == "__main__":
    sys.exit(main())
