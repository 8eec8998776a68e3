#!/usr/bin/env python3
"""New connections and TLS: the Outpost edge against nginx, both in front of
the same test origin, in one run. Both servers run at once, on CPU 0; every
load runs from CPU 1, bounded in time, and the servers take turns run by run.
Both use the same ECDSA P-256 certificate and offer TLS 1.3; both listen
with a backlog of 4096.

Loads (--loads, comma-separated):
- hits: 1 KiB cache hits over keep-alive TLS (wrk, or --client);
- hits-100k, hits-1m: 100 KiB and 1 MiB cache hits over keep-alive TLS
  (wrk): neither server can `sendfile` through TLS without kernel TLS, so
  both read and encrypt every byte in user space. wrk decrypts every
  byte, as much work as the server's encryption, and fills its core
  first: `--client target/release/examples/sink_load` runs the three hits
  loads with the benchmarks' client instead, which decrypts only the
  heads and lets the kernel discard the bodies' records unread;
- handshakes: every request on a new TLS connection (wrk, `Connection:
  close`). wrk resumes its session on every reconnection (it clears its
  SSL object rather than freeing it), so these are resumed handshakes; wrk
  times from sending the request, which leaves the handshake out, and wrk
  itself is the bottleneck: its figures are the rate and the CPU per
  handshake;
- full: full handshakes, no resumption (`outpost load`, 64 VUs, a new
  connection per request): their rate and CPU;
- open: what a first-time visitor waits for. `outpost load` starts new
  HTTPS connections with full handshakes at a constant rate (half the
  slower server's full-handshake rate, or --open-rate), whether or not
  earlier ones have finished, and times each from connect to the first
  response byte, the handshake on its own;
- open-resumed: the same for returning visitors, who resume a session;
- open-http: the same over cleartext HTTP/1.1;
- open-h2c: the same over cleartext HTTP/2 (prior knowledge);
- flood: a TLS handshake flood (one ClientHello replayed on 256 connections
  as fast as the server answers, load-tests/examples/hello_flood.rs) while
  `outpost load` measures 1 KiB keep-alive hits at 1,000/s and then new
  HTTPS connections at 100/s: whether visitors are served while the server
  is saturated by new connections.
Reports medians of the repeats and Outpost's ratios to nginx.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import (HOST, SITE_TLS, arguments, cpu_seconds, edge_toml, make_cert, nginx_conf, start, start_origin,  # noqa: E402
                     stop, write_site, wrk)

PORTS = {"outpost": 18443, "nginx": 18444}
HTTP_PORTS = {"outpost": 18445, "nginx": 18446}
# Outpost's cleartext listener takes h2c as well; nginx needs a listener of its own.
H2C_PORTS = {"outpost": 18445, "nginx": 18447}
PATH = "/bench/tls?size=1KiB&cc=public,%20max-age%3D3600"
# The objects of the hits loads, by load.
HIT_PATHS = {"hits": PATH,
             "hits-100k": "/bench/tls-100k?size=100KiB&cc=public,%20max-age%3D3600",
             "hits-1m": "/bench/tls-1m?size=1MiB&cc=public,%20max-age%3D3600"}
FLOOD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/release/examples/hello_flood")


def configs(work):
    cert, key = make_cert(work, f"DNS:{HOST},IP:127.0.0.1")
    # nginx's default backlog is 511; both servers get the same.
    listen = (f"127.0.0.1:{PORTS['nginx']} ssl backlog=4096;\n    listen 127.0.0.1:{HTTP_PORTS['nginx']} backlog=4096;\n"
              f"    listen 127.0.0.1:{H2C_PORTS['nginx']} http2 backlog=4096")
    nginx = nginx_conf(work, listen,
                       server_extra=f"""    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tls:10m;""",
                       location_extra=f"      proxy_set_header Host {HOST};")
    write_site(work, hosts=(HOST, "127.0.0.1"), extra=SITE_TLS)
    edge = os.path.join(work, "edge.toml")
    # wrk connects by address and sends no server name.
    tls = 'unknown_sni = "default"\ncert = "cert.pem"\nkey = "key.pem"\n'
    listen = f"https = [\"127.0.0.1:{PORTS['outpost']}\"]\nhttp = [\"127.0.0.1:{HTTP_PORTS['outpost']}\"]"
    open(edge, "w").write(edge_toml(listen, 'memory = "256MiB"', extra=f"[tls]\n{tls}"))
    return nginx, edge


def load(binary, work, port, scheme, rate, seconds, reuse=False, resume=False, vus=0, http2=False):
    """One `outpost load` run on CPU 1: at `rate` requests per second, or
    with `vus` closed-model VUs; its JSON metrics."""
    executor = (f'type = "constant-vus"\nvus = {vus}' if vus else
                f'type = "constant-arrival-rate"\nrate = {rate}\npre_allocated_vus = 64\nmax_vus = 1024')
    scenario, out = os.path.join(work, "open.toml"), os.path.join(work, "open.json")
    open(scenario, "w").write(f"""
[target]
urls = ["{scheme}://127.0.0.1:{port}"]
host = "{HOST}"
insecure_skip_tls_verify = true
no_connection_reuse = {"false" if reuse else "true"}
tls_resumption = {"true" if resume else "false"}
http2 = {"true" if http2 else "false"}
[executor]
{executor}
duration = "{seconds}s"
[requests]
path = "{PATH}"
""")
    subprocess.run(["taskset", "-c", "1", binary, "load", scenario, "--quiet", "--out", f"json={out}"], check=True,
                   capture_output=True, timeout=seconds + 60)
    return json.load(open(out))["metrics"]


def opened(m):
    """rate, time to first byte p50 and p99, TLS handshake p50 and p99, failed, dropped."""
    first, tls = m["http_req_first_byte_ms"], m.get("http_req_tls_handshaking_ms", {"med": 0.0, "p99": 0.0})
    return (m["http_reqs"]["rate"], first["med"], first["p99"], tls["med"], tls["p99"], m["http_req_failed"]["fails"],
            m["dropped_iterations"])


def flooded(args, work, name):
    """Under a handshake flood: keep-alive hits, then new connections, each
    timed to the first byte; with the flood's rate."""
    out = []
    for reuse, rate in [(True, 1000), (False, 100)]:
        flood = subprocess.Popen(["taskset", "-c", "1", FLOOD, f"127.0.0.1:{PORTS[name]}", HOST, "256",
                                  str(args.duration + 2)], stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        m = load(args.helper, work, PORTS[name], "https", rate, args.duration, reuse=reuse)
        answered = flood.communicate(timeout=60)[0].split()
        first = m["http_req_first_byte_ms"] if not reuse else m["http_req_duration_ms"]
        out += [first["med"], first["p99"], m["http_req_failed"]["fails"], int(answered[0]) / (args.duration + 2)]
    return out


def main():
    ap = arguments()
    ap.add_argument("--loads", default="hits,hits-100k,hits-1m,handshakes,full,open,open-resumed,open-http,open-h2c,"
                                       "flood",
                    help="which loads, comma-separated")
    ap.add_argument("--client", default="wrk",
                    help="the client for the hits loads: wrk, or target/release/examples/sink_load")
    ap.add_argument("--open-rate", type=int, default=0,
                    help="new connections per second for the open model (default: half the slower handshake rate)")
    ap.add_argument("--helper", help="the outpost binary that runs the test origin and `outpost load` (default: "
                                     "--outpost); pgo.sh's, so that their work is not counted in the edge's profile")
    args = ap.parse_args()
    helper = args.helper = args.helper or args.outpost
    loads = args.loads.split(",")
    work = tempfile.mkdtemp(prefix="outpost-tls-bench-")
    nginx_file, edge_file = configs(work)
    if args.client != "wrk":
        compare.CLIENT, compare.CLIENT_CA = args.client, os.path.join(work, "cert.pem")
    print(f"client for the hits loads: {args.client}", flush=True)
    env = dict(os.environ, RUST_LOG="warn")
    commands = {
        "outpost": [args.outpost, "edge", "--config", edge_file],
        "nginx": ["nginx", "-c", nginx_file, "-p", work, "-g", "daemon off;"],
    }
    origin = start_origin(helper)
    procs = {}
    results = {}
    try:
        for name, cmd in commands.items():
            procs[name] = start(name, cmd, PORTS[name], env=env)
            for path in HIT_PATHS.values():
                subprocess.run(["curl", "-sk", "-o", "/dev/null", "-H", f"Host: {HOST}",
                                f"https://127.0.0.1:{PORTS[name]}{path}"], check=True)
            for scheme, port, extra in [("https", PORTS[name], []), ("http", HTTP_PORTS[name], []),
                                        ("http", H2C_PORTS[name], ["--http2-prior-knowledge"])]:
                url = f"{scheme}://127.0.0.1:{port}{PATH}"
                # One URL per call: curl 7.88 fails a second request on a
                # reused prior-knowledge HTTP/2 connection, to nginx as to us.
                for _ in range(2):
                    subprocess.run(["curl", "-sk", *extra, "-o", "/dev/null", "-H", f"Host: {HOST}", url], check=True)

        def measure(load, run):
            runs = {name: [] for name in commands}
            for _ in range(args.repeats):
                for name, proc in procs.items():
                    before = cpu_seconds(proc.pid)
                    figures = run(name)
                    cpu = cpu_seconds(proc.pid) - before
                    runs[name].append((*figures, cpu))
            for name, rs in runs.items():
                results[(load, name)] = [statistics.median(r[i] for r in rs) for i in range(len(rs[0]))]
                print(f"{load:<10} {name:<8} " + "  ".join(f"{v:.3f}" for v in results[(load, name)]), flush=True)

        for load_name, path, extra in [*((h, p, []) for h, p in HIT_PATHS.items()),
                                       ("handshakes", PATH, ["-H", "Connection: close"])]:
            if load_name in loads:
                def closed(name, path=path, extra=extra):
                    # Handshakes stay with wrk (OpenSSL), as measured before.
                    reqs, rps, p50, p99 = wrk(f"https://127.0.0.1:{PORTS[name]}{path}", args.duration,
                                              args.connections, extra, client=not extra)
                    return rps, p50, p99, reqs
                measure(load_name, closed)
        if "full" in loads:
            def full(name):
                m = load(helper, work, PORTS[name], "https", 0, args.duration, vus=args.connections)
                first = m["http_req_first_byte_ms"]
                return m["http_reqs"]["rate"], first["med"], first["p99"], m["http_reqs"]["count"]
            measure("full", full)
        rates = [results[(l, n)][0] for l in ("full", "handshakes") for n in commands if (l, n) in results]
        rates = rates[:len(commands)]
        rate = args.open_rate or (int(min(rates) / 2) if rates else 0)
        for load_name, scheme, ports, resume, h2 in [("open", "https", PORTS, False, False),
                                                     ("open-resumed", "https", PORTS, True, False),
                                                     ("open-http", "http", HTTP_PORTS, False, False),
                                                     ("open-h2c", "http", H2C_PORTS, False, True)]:
            if load_name in loads:
                if not rate:
                    sys.exit("the open model needs a rate: run the full or handshakes load too, or give --open-rate")
                measure(load_name, lambda name, s=scheme, p=ports, r=resume, h=h2: opened(
                    load(helper, work, p[name], s, rate, args.duration, resume=r, http2=h)))
        if "flood" in loads:
            measure("flood", lambda name: flooded(args, work, name))
    finally:
        for proc in procs.values():
            stop(proc)
        stop(origin)
        shutil.rmtree(work, ignore_errors=True)
    report(results, loads, rate if any(x.startswith("open") for x in loads) else None, args.connections)


def report(results, loads, rate, connections):
    def both(load):
        return (load, "outpost") in results and (load, "nginx") in results

    print()
    closed = ("hits", "hits-100k", "hits-1m", "handshakes", "full")
    if any(l in loads for l in closed):
        hits_client = os.path.basename(compare.CLIENT) if compare.CLIENT else "wrk"
        print(f"closed model, {connections} connections: hits with {hits_client} and handshakes with wrk (request to "
              "response), full handshakes with outpost load (connect to first byte)")
        print(f"{'load':<11} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'per CPU-s':>10}")
        for load in closed:
            for name in ("outpost", "nginx"):
                if (load, name) in results:
                    rps, p50, p99, reqs, cpu = results[(load, name)]
                    print(f"{load:<11} {name:<8} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {reqs / cpu:>10.0f}")
    for load in ("open", "open-resumed", "open-http", "open-h2c"):
        if any((load, n) in results for n in ("outpost", "nginx")):
            print(f"\nopen model ({load}), a new connection per request at {rate}/s: connect to first byte, "
                  "and the TLS handshake (ms)")
            print(f"{'server':<8} {'req/s':>7} {'first p50':>10} {'p99':>7} {'tls p50':>8} {'p99':>7} "
                  f"{'failed':>7} {'dropped':>8}")
            for name in ("outpost", "nginx"):
                if (load, name) in results:
                    rps, f50, f99, t50, t99, failed, dropped, _ = results[(load, name)]
                    print(f"{name:<8} {rps:>7.0f} {f50:>10.3f} {f99:>7.3f} {t50:>8.3f} {t99:>7.3f} {failed:>7.0f} "
                          f"{dropped:>8.0f}")
    if any(("flood", n) in results for n in ("outpost", "nginx")):
        print("\nunder a handshake flood (ms): keep-alive hits at 1000/s (request to response), "
              "new connections at 100/s (connect to first byte)")
        print(f"{'server':<8} {'hits p50':>9} {'p99':>7} {'new p50':>8} {'p99':>8} {'failed':>7} {'flood/s':>8}")
        for name in ("outpost", "nginx"):
            if ("flood", name) in results:
                h50, h99, hf, _, n50, n99, nf, rate_n, _ = results[("flood", name)]
                print(f"{name:<8} {h50:>9.3f} {h99:>7.3f} {n50:>8.3f} {n99:>8.3f} {hf + nf:>7.0f} {rate_n:>8.0f}")
    print()
    for load in closed:
        if both(load):
            o, n = results[(load, "outpost")], results[(load, "nginx")]
            print(f"{load:<11} outpost/nginx  per CPU-s {(o[3] / o[4]) / (n[3] / n[4]):.2f}x   req/s {o[0] / n[0]:.2f}x"
                  f"   p99 {o[2] / n[2]:.2f}x (lower is better)")
    for load in ("open", "open-resumed", "open-http", "open-h2c"):
        if both(load):
            o, n = results[(load, "outpost")], results[(load, "nginx")]
            tls = f"   handshake p50 {o[3] / n[3]:.2f}x  p99 {o[4] / n[4]:.2f}x" if load in ("open", "open-resumed") else ""
            print(f"{load:<11} outpost/nginx  first byte p50 {o[1] / n[1]:.2f}x  p99 {o[2] / n[2]:.2f}x{tls} "
                  "(lower is better)")
    if both("flood"):
        o, n = results[("flood", "outpost")], results[("flood", "nginx")]
        print(f"{'flood':<11} outpost/nginx  hits p99 {o[1] / n[1]:.2f}x   new connections p99 {o[5] / n[5]:.2f}x "
              "(lower is better)")


if __name__ == "__main__":
    sys.exit(main())
