#!/usr/bin/env python3
"""Cold start of a function, scale-from-zero to first byte, N times (default 50).

    bench/cold-start.py CUBEFLASH_BINARY [FUNCTION] [PATH] [N]

Starts `cubeflash up` on a free loopback port for this repo, then N times: scales FUNCTION
to zero through the admin API, waits until no replica is left, and times one GET of PATH
from sending to the first byte of the answer. Prints p50/p90/p99/max, and the gateway's own
per-phase histograms (spawn, readiness, first byte) from /metrics.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/cubeflash")
FUNCTION = sys.argv[2] if len(sys.argv) > 2 else "random-quote"
PATH = sys.argv[3] if len(sys.argv) > 3 else f"/function/{FUNCTION}"
N = int(sys.argv[4]) if len(sys.argv) > 4 else 50
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def first_byte(host, port, path):
    """Seconds from sending a GET to the first byte of the answer (new connection)."""
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        first = s.recv(1)
        elapsed = time.perf_counter() - t
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        head = (first + rest).split(b"\r\n", 1)[0]
        if b" 200 " not in head:
            raise SystemExit(f"unexpected answer: {head!r}")
        return elapsed


def main():
    env = dict(os.environ, CUBEFLASH_PORT="0", CUBEFLASH_ADMIN_TOKEN="bench")
    up = subprocess.Popen([BIN, "-C", ROOT, "up"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        url = up.stdout.readline().split()[-1]
        host, port = url.removeprefix("http://").split(":")
        port = int(port)

        def admin(method, path, body=None):
            req = urllib.request.Request(url + path, method=method, data=body and json.dumps(body).encode(),
                                         headers={"Authorization": "Bearer bench", "Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                return json.load(r)

        first_byte(host, port, PATH)  # warm the interpreter's files into the page cache
        samples = []
        for _ in range(N):
            admin("POST", f"/system/functions/{FUNCTION}/scale", {"replicas": 0})
            while admin("GET", f"/system/functions/{FUNCTION}")["replicas"]["desired"] != 0:
                time.sleep(0.01)
            time.sleep(0.05)  # let the stopped replica's process exit fully
            samples.append(first_byte(host, port, PATH) * 1000)
        ms = lambda v: f"{v:7.1f} ms"
        print(f"cold start of {FUNCTION}, scale-from-zero to first byte, {N} samples, {os.cpu_count()} cores")
        for p in (50, 90, 99):
            print(f"  p{p:<3} {ms(percentile(samples, p))}")
        print(f"  max  {ms(max(samples))}")
        with urllib.request.urlopen(url + "/metrics") as r:
            metrics = r.read().decode()
        for phase in ("spawn", "readiness", "first_byte"):
            key = f'cubeflash_cold_start_phase_seconds_{{}}{{{{function="{FUNCTION}",phase="{phase}"}}}}'
            total = next((float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(key.format("sum"))), 0.0)
            count = next((float(l.split()[-1]) for l in metrics.splitlines() if l.startswith(key.format("count"))), 1.0)
            print(f"  mean {phase:<10} {ms(total / max(count, 1) * 1000)} (gateway's view)")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)


if __name__ == "__main__":
    main()
