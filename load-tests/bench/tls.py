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
"""
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
    args = arguments().parse_args()
    work = tempfile.mkdtemp(prefix="outpost-tls-bench-")
    nginx_conf, edge_conf = configs(work)
    origin = start_origin(args.outpost)
    servers = {
        "outpost": [args.outpost, "edge", "--config", edge_conf],
        "nginx": ["nginx", "-c", nginx_conf, "-p", work, "-g", "daemon off;"],
    }
    env = dict(os.environ, RUST_LOG="warn")
    path = "/bench/tls?size=1KiB&cc=public,%20max-age%3D3600"
    loads = {"hits": [], "handshakes": ["-H", "Connection: close"]}
    results = {}
    try:
        for name, cmd in servers.items():
            proc = start(name, cmd, PORTS[name], env=env)
            try:
                url = f"https://127.0.0.1:{PORTS[name]}{path}"
                subprocess.run(["curl", "-sk", "-o", "/dev/null", "-o", "/dev/null", "-H", f"Host: {HOST}", url, url],
                               check=True)
                for load, extra in loads.items():
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
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'load':<10} {'server':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'per CPU-s':>10}")
    for (load, name), (rps, p50, p99, eff) in results.items():
        print(f"{load:<10} {name:<8} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {eff:>10.0f}")
    print()
    for load in loads:
        o, n = results[(load, "outpost")], results[(load, "nginx")]
        print(f"{load:<10} outpost/nginx  per CPU-s {o[3] / n[3]:.2f}x   req/s {o[0] / n[0]:.2f}x   "
              f"p99 {o[2] / n[2]:.2f}x (lower is better)")


if __name__ == "__main__":
    sys.exit(main())
