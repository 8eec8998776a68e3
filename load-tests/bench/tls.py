#!/usr/bin/env python3
"""TLS benchmark: the Outpost edge against nginx, both terminating TLS in
front of the same test origin, in one run.

Two loads per server, each bounded in time, with the server on CPU 0 and wrk
on CPU 1:
- handshakes: every request on a new connection (`Connection: close`), so
  each one costs a full TLS handshake (wrk keeps no sessions);
- hits: 1 KiB cache hits over keep-alive TLS connections.
Both servers use the same ECDSA P-256 certificate and offer TLS 1.3. Reports
medians of the repeats and Outpost's ratios to nginx, per CPU-second.

wrk's latency runs from sending a request to its response, so on new
connections it leaves out the handshake. The open-model load measures what a
new visitor waits for: `outpost load` (on CPU 1) starts new connections at a
constant rate, half the slower server's handshake rate under wrk, whether or
not earlier ones have finished, and times each from connect to the first
response byte, with the TLS handshake on its own.
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
from compare import ORIGIN, arguments, cpu_seconds, edge_toml, nginx_conf, start, start_origin, stop, wrk  # noqa: E402

PORTS = {"outpost": 18443, "nginx": 18444}
HOST = "bench.test"


def configs(work):
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-subj", f"/CN={HOST}", "-days", "30",
                    "-addext", f"subjectAltName=DNS:{HOST},IP:127.0.0.1"], check=True, capture_output=True)
    nginx = nginx_conf(work, f"127.0.0.1:{PORTS['nginx']} ssl",
                       server_extra=f"""    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tls:10m;""",
                       location_extra=f"      proxy_set_header Host {HOST};")
    open(os.path.join(work, "bench.site.toml"), "w").write(f"""
[site]
id = "bench"
hosts = ["{HOST}", "127.0.0.1"]
[[origin]]
url = "http://{ORIGIN[0]}:{ORIGIN[1]}"
[cache]
default_ttl = "1h"
[tls]
cert = "cert.pem"
key = "key.pem"
""")
    edge = os.path.join(work, "edge.toml")
    # wrk connects by address and sends no server name.
    tls = 'unknown_sni = "default"\ncert = "cert.pem"\nkey = "key.pem"\n'
    open(edge, "w").write(edge_toml(f"https = [\"127.0.0.1:{PORTS['outpost']}\"]", 'memory = "256MiB"',
                                    extra=f"[tls]\n{tls}"))
    return nginx, edge


def main():
    ap = arguments()
    ap.add_argument("--servers", default="outpost,nginx", help="which servers, comma-separated")
    ap.add_argument("--loads", default="hits,handshakes,open", help="which loads, comma-separated")
    ap.add_argument("--open-rate", type=int, default=0,
                    help="new connections per second for the open model (default: half the handshake rate)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="outpost-tls-bench-")
    nginx_conf, edge_conf = configs(work)
    origin = start_origin(args.outpost)
    servers = {
        "outpost": [args.outpost, "edge", "--config", edge_conf],
        "nginx": ["nginx", "-c", nginx_conf, "-p", work, "-g", "daemon off;"],
    }
    servers = {k: v for k, v in servers.items() if k in args.servers.split(",")}
    env = dict(os.environ, RUST_LOG="warn")
    path = "/bench/tls?size=1KiB&cc=public,%20max-age%3D3600"
    loads = {"hits": [], "handshakes": ["-H", "Connection: close"], "open": []}
    loads = {k: v for k, v in loads.items() if k in args.loads.split(",")}
    results = {}
    try:
        for name, cmd in servers.items():
            proc = start(name, cmd, PORTS[name], env=env)
            try:
                url = f"https://127.0.0.1:{PORTS[name]}{path}"
                subprocess.run(["curl", "-sk", "-o", "/dev/null", "-o", "/dev/null", "-H", f"Host: {HOST}", url, url],
                               check=True)
                for load, extra in loads.items():
                    if load == "open":
                        continue
                    runs = []
                    for _ in range(args.repeats):
                        before = cpu_seconds(proc.pid)
                        reqs, rps, p50, p99 = wrk(url, args.duration, args.connections, extra)
                        cpu = cpu_seconds(proc.pid) - before
                        runs.append((rps, p50, p99, reqs / cpu if cpu > 0 else float("nan")))
                    med = [statistics.median(r[i] for r in runs) for i in range(4)]
                    results[(load, name)] = med
                    print(f"{load:<10} {name:<8} {med[0]:>9.0f} req/s  p50 {med[1]:.3f} ms  p99 {med[2]:.3f} ms  "
                          f"{med[3]:>8.0f} per CPU-s", flush=True)
            finally:
                stop(proc)
        if "open" in loads:
            open_model(args, work, servers, env, path, results)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'load':<10} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'per CPU-s':>10}")
    for (load, name), (rps, p50, p99, eff, *_) in results.items():
        print(f"{load:<10} {name:<8} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {eff:>10.0f}")
    opened = [(name, r) for (load, name), r in results.items() if load == "open"]
    if opened:
        print(f"\nopen model, new connection per request: connect to first byte, and the TLS handshake")
        print(f"{'server':<8} {'req/s':>8} {'ttfb p50':>9} {'p99':>8} {'tls p50':>8} {'p99':>8} {'failed':>7} {'dropped':>8}")
        for name, (rps, p50, p99, _, tls50, tls99, failed, dropped) in opened:
            print(f"{name:<8} {rps:>8.0f} {p50:>9.3f} {p99:>8.3f} {tls50:>8.3f} {tls99:>8.3f} {failed:>7} {dropped:>8}")
    print()
    for load in loads:
        if (load, "outpost") not in results or (load, "nginx") not in results:
            continue
        o, n = results[(load, "outpost")], results[(load, "nginx")]
        if load == "open":
            print(f"open       outpost/nginx  time to first byte p50 {o[1] / n[1]:.2f}x   p99 {o[2] / n[2]:.2f}x "
                  "(lower is better)")
            continue
        print(f"{load:<10} outpost/nginx  per CPU-s {o[3] / n[3]:.2f}x   req/s {o[0] / n[0]:.2f}x   "
              f"p99 {o[2] / n[2]:.2f}x (lower is better)")


def open_model(args, work, servers, env, path, results):
    """Each server in turn under the open model, at half the slower server's
    handshake rate (or --open-rate), the medians of the repeats."""
    rates = [results[("handshakes", n)][0] for n in servers if ("handshakes", n) in results]
    rate = args.open_rate or int(min(rates) / 2) if (args.open_rate or rates) else 0
    if not rate:
        print("open model: no rate (run the handshakes load too, or give --open-rate)")
        return
    for name, cmd in servers.items():
        scenario = os.path.join(work, f"open-{name}.toml")
        open(scenario, "w").write(f"""
[target]
urls = ["https://127.0.0.1:{PORTS[name]}"]
host = "{HOST}"
insecure_skip_tls_verify = true
no_connection_reuse = true
[executor]
type = "constant-arrival-rate"
rate = {rate}
duration = "{args.duration}s"
pre_allocated_vus = 64
max_vus = 1024
[requests]
path = "{path}"
""")
        proc = start(name, cmd, PORTS[name], env=env)
        try:
            runs = []
            for _ in range(args.repeats):
                out = os.path.join(work, f"open-{name}.json")
                before = cpu_seconds(proc.pid)
                subprocess.run(["taskset", "-c", "1", args.outpost, "load", scenario, "--quiet", "--out",
                                f"json={out}"], check=True, capture_output=True, timeout=args.duration + 60)
                cpu = cpu_seconds(proc.pid) - before
                m = json.load(open(out))["metrics"]
                reqs, first, tls = m["http_reqs"], m["http_req_first_byte_ms"], m["http_req_tls_handshaking_ms"]
                runs.append((reqs["rate"], first["med"], first["p99"], reqs["count"] / cpu if cpu > 0 else float("nan"),
                             tls["med"], tls["p99"], m["http_req_failed"]["fails"], m["dropped_iterations"]))
            med = [statistics.median(r[i] for r in runs) for i in range(8)]
            results[("open", name)] = med
            print(f"open       {name:<8} {med[0]:>9.0f} req/s  first byte p50 {med[1]:.3f} ms  p99 {med[2]:.3f} ms  "
                  f"(tls p50 {med[4]:.3f} p99 {med[5]:.3f}; failed {med[6]:.0f}, dropped {med[7]:.0f})", flush=True)
        finally:
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
