#!/usr/bin/env python3
"""A flood of connections with stalled bodies against the local gateway (loopback only):
10,000 connections each send the head of a 6 MB POST and 100 bytes of it, then nothing.
Meanwhile /healthz is asked on new connections; reports its latency and the gateway's RSS.

    python3 bench/stalled-flood.py [path/to/cubeflash] [connections]
"""
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else "target/release/cubeflash")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

work = tempfile.mkdtemp()
os.chmod(work, 0o755)  # a root gateway runs replicas as nobody
os.makedirs(f"{work}/functions/fn")
with open(f"{work}/cubeflash.yaml", "w") as f:
    f.write("namespace: bench\n")
with open(f"{work}/functions/fn/function.yaml", "w") as f:
    f.write("name: fn\nruntime: python\nhandler: handler.py\nscale: { min: 1 }\n")
with open(f"{work}/functions/fn/handler.py", "w") as f:
    f.write("def handle(req):\n    return {'ok': True}\n")

env = dict(os.environ, CUBEFLASH_PORT="0", CUBEFLASH_LOG="warn")
gw = subprocess.Popen([BIN, "-C", work, "up"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
url = None
for line in gw.stdout:
    if line.startswith("cubeflash gateway listening on "):
        url = line.split()[-1]
        break
host, port = url.removeprefix("http://").split(":")
port = int(port)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def healthz_ms():
    t = time.perf_counter()
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = s.recv(4096)
    s.close()
    took = (time.perf_counter() - t) * 1000
    return took, data.split(b"\r\n", 1)[0].decode()


time.sleep(1.0)
print(f"gateway RSS before: {rss_mb(gw.pid):.1f} MB")
head = b"POST /function/fn HTTP/1.1\r\nHost: x\r\nContent-Length: 6000000\r\n\r\n" + b"x" * 100
flood = []
started = time.time()
for i in range(N):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(head)
        flood.append(s)
    except OSError:
        pass
print(f"opened {len(flood)} stalled connections in {time.time() - started:.1f} s")
time.sleep(2.0)
samples = [healthz_ms() for _ in range(20)]
lat = sorted(t for t, _ in samples)
statuses = sorted({s for _, s in samples})
print(f"/healthz during the flood: p50 {lat[10]:.1f} ms, max {lat[-1]:.1f} ms, answers {statuses}")
print(f"gateway RSS during the flood: {rss_mb(gw.pid):.1f} MB")
for s in flood:
    s.close()
gw.terminate()
gw.wait(timeout=30)
