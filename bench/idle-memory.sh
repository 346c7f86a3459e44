#!/usr/bin/env bash
# Gateway memory with 1,000 registered idle functions (scale.min 0): starts `cubeflash up`
# on a throwaway repo, lets it settle, and reads the gateway process's VmRSS and VmHWM from
# /proc (its replicas and warm interpreters are separate processes and not counted).
#
#   bench/idle-memory.sh [path/to/cubeflash] [FUNCTIONS]
set -euo pipefail
BIN="$(realpath "${1:-target/release/cubeflash}")"
N="${2:-1000}"
WORK="$(mktemp -d)"
# A gateway run as root runs replicas as nobody, who must be able to read the repo.
chmod 755 "$WORK"
cleanup() { [ -n "${UP_PID:-}" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/functions"
printf 'namespace: bench\n' > "$WORK/cubeflash.yaml"
for i in $(seq -w 1 "$N"); do
  mkdir -p "$WORK/functions/fn-$i"
  printf 'name: fn-%s\nruntime: python\nhandler: handler.py\ntriggers:\n  - http: { path: /fn-%s }\n' "$i" "$i" > "$WORK/functions/fn-$i/function.yaml"
  printf 'def handle(req):\n    return "%s"\n' "$i" > "$WORK/functions/fn-$i/handler.py"
done
CUBEFLASH_PORT=0 "$BIN" -C "$WORK" up > "$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 200); do grep -q listening "$WORK/up.log" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -m1 -o 'http://[0-9.:]*' "$WORK/up.log")
sleep 3
idle=$(awk '/VmRSS/ {print $2}' "/proc/$UP_PID/status")
# One call to a few functions (cold starts), then idle again: RSS after real use.
for i in 0001 0500 1000; do curl -s "$URL/fn-$i" >/dev/null || true; done
sleep 1
used=$(awk '/VmRSS/ {print $2}' "/proc/$UP_PID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$UP_PID/status")
echo "gateway with $N idle functions: RSS $((idle / 1024)) MiB at rest, $((used / 1024)) MiB after 3 cold starts, peak $((hwm / 1024)) MiB (target < 50 MB)"
