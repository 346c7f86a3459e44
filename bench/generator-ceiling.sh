#!/usr/bin/env bash
# The load generator's own ceiling: `cubeflash bench --url` against nginx returning a fixed
# body, beside wrk and oha at the same connection count, in interleaved rounds (cubeflash,
# wrk, oha, cubeflash, ...) so machine drift hits all alike. Prints requests/s per round and
# the ratios of the medians. With MEMORY=1 it then sends 10 million requests and samples
# cubeflash's resident memory every 10 s (it must stay flat), then the same through a trace
# step (open loop, 10 million requests in bursts at TRACE_RATE, default 40,000/s).
#
#   bench/generator-ceiling.sh [path/to/cubeflash]   needs nginx and wrk (Debian), oha (cargo install oha)
#   ROUNDS=5 DURATION=8s CONNECTIONS=64 THREADS=2 MEMORY=1 bench/generator-ceiling.sh
set -euo pipefail
BIN="$(realpath "${1:-target/release/cubeflash}")"
ROUNDS="${ROUNDS:-5}"; DURATION="${DURATION:-8s}"; CONNS="${CONNECTIONS:-64}"; THREADS="${THREADS:-2}"
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install nginx-light wrk" >&2; exit 2; }
done
OHA="$(command -v oha || echo "$HOME/.cargo/bin/oha")"
[ -x "$OHA" ] || { echo "needs oha: cargo install oha" >&2; exit 2; }
WORK="$(mktemp -d)"
cleanup() {
  [ -f "$WORK/nginx.pid" ] && kill -TERM "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy; fastcgi_temp_path $WORK/fcgi;
  uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$PORT; location / { return 200 "hello from nginx\n"; } }
}
CONF
nginx -p "$WORK" -c "$WORK/nginx.conf"
URL="http://127.0.0.1:$PORT/"
sleep 0.3
echo "nginx (1 worker) on $URL; $ROUNDS rounds of $DURATION at $CONNS connections, $THREADS generator threads; $(nproc) cores"

ours() { "$BIN" bench --url "$URL" -c "$CONNS" -z "$DURATION" --threads "$THREADS" --out "$WORK/results" \
           | awk '$1=="url" && $2=="closed" && $5!="ok" {print $6; exit}'; }
wrkr() { wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$URL" | awk '/Requests\/sec/ {print $2}'; }
ohar() { "$OHA" --no-tui -c "$CONNS" -z "$DURATION" --output-format json "$URL" \
           | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["summary"]["requestsPerSec"],1))'; }

: > "$WORK/runs"
for i in $(seq "$ROUNDS"); do
  a="$(ours)"; b="$(wrkr)"; c="$(ohar)"
  printf 'round %d: cubeflash %s  wrk %s  oha %s req/s\n' "$i" "$a" "$b" "$c"
  echo "$a $b $c" >> "$WORK/runs"
done
python3 - "$WORK/runs" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"median req/s: cubeflash {med[0]:.0f}  wrk {med[1]:.0f}  oha {med[2]:.0f}")
print(f"ratio cubeflash/wrk {med[0]/med[1]:.2f} (target >= 1.0)   cubeflash/oha {med[0]/med[2]:.2f} (target >= 1.0)")
print("per-round ratios vs wrk: " + " ".join(f"{r[0]/r[1]:.2f}" for r in rows))
print("per-round ratios vs oha: " + " ".join(f"{r[0]/r[2]:.2f}" for r in rows))
PY

# Prints the resident memory of process $1 every 10 s until it ends; fails as it failed.
watch_rss() {
  local pid="$1" rss
  while kill -0 "$pid" 2>/dev/null; do
    rss="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [ -n "$rss" ] && echo "  $(date +%T) RSS ${rss} kB"
    sleep 10
  done
  wait "$pid"
}

if [ "${MEMORY:-0}" = 1 ]; then
  echo "memory: 10,000,000 requests at $CONNS connections; RSS of cubeflash every 10 s"
  "$BIN" bench --url "$URL" -c "$CONNS" -n 10000000 --threads "$THREADS" --out "$WORK/results" > "$WORK/mem.out" &
  watch_rss $!
  awk '$1=="url" && $2=="closed"' "$WORK/mem.out" | head -1
  RATE="${TRACE_RATE:-40000}"
  BURST=$(( 2000000 / RATE ))
  echo "memory, trace mode: 5 bursts of ${BURST}s at $RATE/s (10,000,000 requests) with 2 s silences; RSS every 10 s"
  cat > "$WORK/trace-plan.yaml" <<PLAN
targets:
  - url: $URL
steps:
  - trace:
      phases: [{rate: $RATE, for: ${BURST}s}, {rate: 0, for: 2s}]
      repeat: 5
      connections: $CONNS
PLAN
  "$BIN" bench "$WORK/trace-plan.yaml" --threads "$THREADS" --out "$WORK/results" > "$WORK/trace.out" &
  watch_rss $!
  grep -m1 ' trace ' "$WORK/trace.out" || tail -n 5 "$WORK/trace.out"
fi
