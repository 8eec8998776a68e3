#!/usr/bin/env python3
"""Memory per idle keep-alive connection: the Outpost edge, nginx and
Varnish, each holding the same number of idle client connections.

For each server: start it (pinned to CPU 0), warm a 1 KiB object, read the
resident memory of its whole process tree, open --idle connections that each
make one cache hit and then stay open and idle, read the memory again, and
report the difference per connection. Every connection is closed before the
next server starts; all traffic stays on 127.0.0.1.

By default the connections open in one burst and the memory is read a
second later. With --batch N, they open N at a time with --pause seconds
between batches, as a site's visitors' connections go idle over time; a
server that lets go of an idle connection's buffers reuses them for the
next batch.

With --tls the connections are HTTPS (HTTP/1.1 by ALPN, TLS 1.3, the same
certificate for both servers) against Outpost and nginx (Varnish has no
TLS). With --h2 they are HTTPS with HTTP/2 by ALPN, as browsers' are: each
sends the connection preface and one GET, reads the answer whole and
stays open.
"""
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import HOST, ORIGIN, PORTS, arguments, configs, get, start, start_origin, stop, tree  # noqa: E402
import tls  # noqa: E402

PATH = "/bench/1KiB?size=1KiB&cc=public,%20max-age%3D3600"
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def rss_bytes(pid):
    total = 0
    for p in tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def read_response(sock):
    """Reads one response with a Content-Length body; returns its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed a connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0].decode()


def client_tls(alpn="http/1.1"):
    """A TLS client context that takes the bench's self-signed certificate
    and asks for `alpn`."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def hpack_literal(index, value):
    """A field of the static table's name `index`, its value literal and
    not indexed (RFC 7541, 6.2.2); values here are shorter than 127 bytes."""
    value = value.encode()
    return bytes([index, len(value)]) + value


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# :method GET, :scheme https (both from the static table), :path, :authority.
H2_REQUEST = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
              + frame(1, 0x5, 1, b"\x82\x87" + hpack_literal(4, PATH) + hpack_literal(1, HOST)))


def h2_exchange(sock):
    """Sends the preface and one GET on stream 1, acknowledges the server's
    settings, and reads until the answer ends; returns its status."""
    sock.sendall(H2_REQUEST)
    data, status = b"", None
    while True:
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed an HTTP/2 connection")
            data += chunk
        length, kind, flags = int.from_bytes(data[:3], "big"), data[3], data[4]
        stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        payload, data = data[9:9 + length], data[9 + length:]
        if kind == 4 and not flags & 1:
            sock.sendall(frame(4, 1, 0, b""))
        elif kind == 7:
            raise SystemExit(f"the server sent GOAWAY: {payload!r}")
        elif stream == 1 and kind == 1:
            # The first field of an answer is :status, from the static
            # table (0x88 is 200) or literal.
            status = "200" if payload[:1] == b"\x88" else f"not 200 ({payload[:8].hex()})"
        if stream == 1 and kind in (0, 1) and flags & 1:
            return status


def hold_idle(port, n, batch, pause, secure=None, h2=False):
    """n connections, each after one request answered; batch at a time,
    pause seconds apart (all at once when batch is 0); over TLS with the
    client context `secure`, in HTTP/2 with `h2`."""
    socks = []
    for i in range(n):
        if batch and i and i % batch == 0:
            time.sleep(pause)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if secure:
            s = secure.wrap_socket(s, server_hostname=HOST)
        if h2:
            if s.selected_alpn_protocol() != "h2":
                raise SystemExit(f"port {port} did not choose h2: {s.selected_alpn_protocol()}")
            status = f" {h2_exchange(s)} "
        else:
            s.sendall(REQUEST)
            status = read_response(s)
        if " 200 " not in status + " ":
            raise SystemExit(f"unexpected answer on port {port}: {status}")
        socks.append(s)
    return socks


def main():
    ap = arguments()
    ap.add_argument("--idle", type=int, default=10000, help="idle connections held per server")
    ap.add_argument("--batch", type=int, default=0, help="open this many at a time (0: all at once)")
    ap.add_argument("--pause", type=float, default=2.5, help="seconds between batches")
    ap.add_argument("--tls", action="store_true", help="HTTPS connections, against Outpost and nginx")
    ap.add_argument("--h2", action="store_true", help="HTTPS connections in HTTP/2 (implies --tls)")
    args = ap.parse_args()
    args.tls = args.tls or args.h2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle + 1000)), hard))
    work = tempfile.mkdtemp(prefix="outpost-idle-")
    if args.tls:
        nginx_conf, edge_conf = tls.configs(work)
        ports, secure = tls.PORTS, client_tls("h2" if args.h2 else "http/1.1")
    else:
        nginx_conf, edge_confs = configs(work)
        edge_conf, ports, secure = edge_confs["outpost"], PORTS, None
    # Room for every idle connection (the default cap is 10,000), all from
    # one client network (an edge's default lets one hold a quarter), and
    # timeouts longer than the measurement.
    open(edge_conf, "a").write(
        f"\n[limits]\nmax_connections = {args.idle * 2}\nconnections_per_network = 0\nidle_timeout = \"600s\"\n"
    )
    conf = open(nginx_conf).read().replace("worker_connections 4096;", f"worker_connections {args.idle * 2};")
    if args.h2:
        conf = conf.replace(" ssl backlog=", " ssl http2 backlog=")
    open(nginx_conf, "w").write(conf)
    origin = start_origin(args.outpost)
    servers = {
        "outpost": [args.outpost, "edge", "--config", edge_conf],
        "nginx": ["nginx", "-c", nginx_conf, "-p", work, "-g", "daemon off; worker_rlimit_nofile 65536;"],
    }
    if not args.tls:
        servers["varnish"] = ["varnishd", "-F", "-j", "none", "-n", os.path.join(work, "varnish"), "-a",
                              f"127.0.0.1:{PORTS['varnish']}", "-b", f"{ORIGIN[0]}:{ORIGIN[1]}", "-s", "malloc,256m",
                              "-p", "thread_pools=1", "-p", "timeout_idle=600"]
    env = dict(os.environ, RUST_LOG="warn")
    results = {}
    try:
        for round_no in range(args.repeats):
            for name, cmd in servers.items():
                proc = start(name, cmd, ports[name], env=env)
                try:
                    warm = tls.HTTP_PORTS[name] if args.tls else PORTS[name]
                    for _ in range(3):
                        get(f"http://127.0.0.1:{warm}{PATH}")
                    time.sleep(0.5)
                    before = rss_bytes(proc.pid)
                    socks = hold_idle(ports[name], args.idle, args.batch, args.pause, secure, args.h2)
                    time.sleep(1)
                    after = rss_bytes(proc.pid)
                    per = (after - before) / args.idle
                    results.setdefault(name, []).append(per)
                    print(f"{name:<8} round {round_no + 1}: {args.idle} idle connections, "
                          f"{(after - before) / 2**20:.1f} MiB, {per:,.0f} bytes each", flush=True)
                    for s in socks:
                        s.close()
                finally:
                    stop(proc)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    print()
    med = {k: statistics.median(v) for k, v in results.items()}
    for name, per in med.items():
        print(f"{name:<8} {per:>10,.0f} bytes per idle connection (median of {len(results[name])})")
    for other in (o for o in ("nginx", "varnish") if o in med):
        print(f"outpost/{other:<8} {med['outpost'] / med[other]:.2f}x (lower is better)")


if __name__ == "__main__":
    sys.exit(main())
