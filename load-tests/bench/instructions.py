#!/usr/bin/env python3
"""User-space instructions per cache hit, counted by valgrind's callgrind:
the Outpost edge and the bare hyper server (load-tests/examples/bare_hyper.rs)
answer the same hits, each under callgrind; after a warm-up the counts are
zeroed, wrk runs for a fixed time, and the counts are dumped and divided by
the requests wrk finished.

Unlike req/CPU-s, an instruction count does not move with whatever else the
machine is doing, so it shows a change of a few percent in the code a hit
runs. It leaves out the kernel (the socket work a hit costs every server
alike), and an instruction is not a fixed time: an atomic or a cache miss
costs more than its count says. With --top N it also prints the Outpost
functions that cost the most per hit, with what they call.

With --cache, callgrind also simulates the caches (the machine's L1
instruction and data caches, and its last level) and the script reports
the misses per request: code that no longer fits the L1 instruction cache
costs a trip to L2 for each line, which the instruction count does not
show.

Outpost must be built for it: valgrind does not map the kernel's vDSO, which
rustix's own backend reads, so instructions.sh builds it with rustix's libc
backend (--cfg rustix_use_libc) in target/instructions.
"""
import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

PORT = 18090


def count(work, cmd, size, seconds, conns, cache=False):
    """Callgrind's counts per request of the server `cmd` starts, by event
    (`Ir`: instructions; with `cache`, `I1mr`, `D1mr`, `D1mw`… too), the
    requests counted, and its callgrind dump (in `work`)."""
    out = os.path.join(tempfile.mkdtemp(dir=work), "callgrind.out")
    sim = ["--cache-sim=yes"] if cache else []
    with open(out + ".log", "w") as log:
        server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                                   *sim, *cmd], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        # Many times slower under valgrind: room to start.
        c.wait_port(PORT, timeout=180)
        url = f"http://127.0.0.1:{PORT}/bench/{size}?size={size}&cc=public,%20max-age%3D3600"
        for _ in range(3):
            c.get(url)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
        requests = c.wrk(url, seconds, conns)[0]
        if requests == 0:
            raise SystemExit(f"no request finished in {seconds} s under valgrind: try a longer --duration")
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
        time.sleep(1)
        dump = max(glob.glob(out + ".*[0-9]"), key=os.path.getmtime)
        lines = open(dump).read().splitlines()
        events = next(line.split()[1:] for line in lines if line.startswith("events:"))
        totals = next(line.split()[1:] for line in lines if line.startswith(("summary:", "totals:")))
        return {e: int(t) / requests for e, t in zip(events, totals)}, requests, dump
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def heaviest(dump, requests, top):
    """Outpost's `top` functions by instructions per request, each with
    what it calls counted in (inclusive)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                          capture_output=True, text=True).stdout
    seen = set()
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0][0].isdigit():
            continue
        name = parts[2].split(":", 1)[-1].rsplit(" [", 1)[0]
        if not name.startswith(("outpost_", "<outpost_")) or name in seen:
            continue
        seen.add(name)
        print(f"  {int(parts[0].replace(',', '')) / requests:8.0f}  {name}")
        if len(seen) == top:
            return


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outpost", required=True, help="an Outpost built with --cfg rustix_use_libc")
    p.add_argument("--bare", help="the bare hyper example, for comparison")
    p.add_argument("--sizes", default="1KiB")
    p.add_argument("--duration", type=int, default=4, help="seconds of load per count")
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--top", type=int, default=0)
    p.add_argument("--cache", action="store_true", help="simulate the caches and report misses per request too")
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="outpost-instructions-")
    c.write_site(work)
    cfg = os.path.join(work, "edge.toml")
    # Memory only: a disk tier's threads would be counted too.
    open(cfg, "w").write(c.edge_toml(f'http = ["127.0.0.1:{PORT}"]', 'memory = "256MiB"'))
    try:
        origin = c.start_origin(a.outpost)
    except SystemExit:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        for size in a.sizes.split(","):
            ours, requests, dump = count(work, [a.outpost, "edge", "--config", cfg], size, a.duration, a.conns, a.cache)
            line = f"{size} hits: Outpost {ours['Ir']:,.0f} instructions per request"
            bare = None
            if a.bare:
                bare_cmd = [a.bare, f"127.0.0.1:{PORT}", str(c.size_bytes(size))]
                bare, _, _ = count(work, bare_cmd, size, a.duration, a.conns, a.cache)
                line += f", bare hyper {bare['Ir']:,.0f} ({ours['Ir'] / bare['Ir']:.2f}x)"
            print(line, flush=True)
            if a.cache:
                for who, n in (("Outpost", ours), ("bare hyper", bare)):
                    if n:
                        print(f"  {who}: L1 instruction misses {n['I1mr']:,.1f}, L1 data misses "
                              f"{n['D1mr'] + n['D1mw']:,.1f}, last-level misses "
                              f"{n['ILmr'] + n['DLmr'] + n['DLmw']:,.1f} per request", flush=True)
            if a.top:
                heaviest(dump, requests, a.top)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
