#!/usr/bin/env bash
# Gateway overhead: wrk at 32 connections through the cubeflash gateway to a fast exec
# function (nginx returning a fixed body), against nginx's own reverse proxy to an identical
# backend (the function's always-on baseline replica), and against that backend directly.
# Runs are interleaved (gateway, nginx, direct, gateway, ...) so machine drift hits all alike.
#
#   bench/gateway-overhead.sh [path/to/cubeflash]      needs nginx and wrk (Debian packages)
#   ROUNDS=3 DURATION=10s CONNECTIONS=32 bench/gateway-overhead.sh
#   PAGES=50 bench/gateway-overhead.sh  also the dashboard's cost: the gateway's CPU at idle
#                                      with and without 50 open live pages (/system/stream),
#                                      the gateway again with them open in every round, and
#                                      /ui's own serve time
#   KUBE=1 bench/gateway-overhead.sh   also `cubeflash gateway` (the Kubernetes backend) against
#                                      bench/fake-kube-api.py, its Service being the identical
#                                      baseline backend: the two forwarding paths compared
set -euo pipefail
BIN="$(realpath "${1:-target/release/cubeflash}")"
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-10s}"; CONNS="${CONNECTIONS:-32}"; PAGES="${PAGES:-0}"
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install nginx-light wrk" >&2; exit 2; }
done
WORK="$(mktemp -d)"
# A gateway run as root runs replicas as nobody, who must be able to read the repo.
chmod 755 "$WORK"
cleanup() {
  [ -n "${UP_PID:-}" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  [ -f "$WORK/proxy.pid" ] && kill -TERM "$(cat "$WORK/proxy.pid")" 2>/dev/null || true
  [ -n "${KGW_PID:-}" ] && kill -TERM "$KGW_PID" 2>/dev/null || true
  [ -n "${API_PID:-}" ] && kill -TERM "$API_PID" 2>/dev/null || true
  [ -f "$WORK/pages" ] && xargs -r kill < "$WORK/pages" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The function: nginx on $PORT returning a fixed body (and 200 on /_/ready like any path).
mkdir -p "$WORK/repo/functions/fixed"
printf 'namespace: bench\n' > "$WORK/repo/cubeflash.yaml"
cat > "$WORK/repo/functions/fixed/function.yaml" <<'YAML'
name: fixed
runtime: exec
handler: sh run-nginx.sh
scale: { min: 1, max: 1, concurrency: 1000 }
baseline: { replicas: 1 }
YAML
cat > "$WORK/repo/functions/fixed/run-nginx.sh" <<'SH'
dir=$(mktemp -d)
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$PORT; location / { return 200 "hello from a fixed backend\n"; } }
}
CONF
exec nginx -p "$dir" -c "$dir/nginx.conf"
SH

CUBEFLASH_PORT=0 CUBEFLASH_ADMIN_TOKEN=bench "$BIN" -C "$WORK/repo" up > "$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/up.log" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -m1 -o 'http://[0-9.:]*' "$WORK/up.log")
describe() { curl -s -H 'Authorization: Bearer bench' "$GW/system/functions/fixed"; }
for _ in $(seq 100); do
  d=$(describe)
  if echo "$d" | grep -q '"ready": 1' && echo "$d" | grep -q '"baselineUrl": "http'; then break; fi
  sleep 0.1
done
BACKEND=$(describe | sed -n 's/.*"baselineUrl": "\(http[^"]*\)".*/\1/p')
[ -n "$BACKEND" ] || { echo "the function did not come up:"; cat "$WORK/up.log"; exit 1; }

# nginx as the peer: a reverse proxy with keep-alive to the baseline backend.
PROXY_PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p "$WORK/proxy"
cat > "$WORK/proxy/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/proxy.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/proxy/body; proxy_temp_path $WORK/proxy/tmp; fastcgi_temp_path $WORK/proxy/fcgi;
  uwsgi_temp_path $WORK/proxy/uwsgi; scgi_temp_path $WORK/proxy/scgi;
  keepalive_requests 1000000;
  upstream backend { server ${BACKEND#http://}; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf"
sleep 0.3

KGW=""
if [ "${KUBE:-0}" = 1 ]; then
  free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
  API_PORT=$(free_port); KGW_PORT=$(free_port)
  python3 "$(dirname "$0")/fake-kube-api.py" "$API_PORT" bench fixed "$BACKEND" &
  API_PID=$!
  cat > "$WORK/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://127.0.0.1:$API_PORT"}}]
users: [{name: fake, user: {}}]
contexts: [{name: fake, context: {cluster: fake, user: fake, namespace: bench}}]
current-context: fake
KC
  sleep 0.5
  KUBECONFIG="$WORK/kubeconfig" "$BIN" gateway --namespace bench --bind 127.0.0.1 --port "$KGW_PORT" > "$WORK/kgw.log" 2>&1 &
  KGW_PID=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$KGW_PORT/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$KGW_PORT/function/fixed" >/dev/null || { echo "the Kubernetes gateway did not come up:"; cat "$WORK/kgw.log"; exit 1; }
  KGW="http://127.0.0.1:$KGW_PORT/function/fixed"
fi

run() { # run NAME URL -> "rps p50_ms p99_ms"
  local out
  out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$2")
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 120.00us / 1.20ms / 1.00s
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

wrk -t2 -c"$CONNS" -d2s "$GW/function/fixed" >/dev/null
wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$PROXY_PORT/" >/dev/null
[ -n "$KGW" ] && wrk -t2 -c"$CONNS" -d2s "$KGW" >/dev/null
# The dashboard: PAGES live pages are PAGES open event streams, as each page holds one.
open_pages() {
  for _ in $(seq "$PAGES"); do
    curl -sN -H 'Authorization: Bearer bench' "$GW/system/stream" > /dev/null & echo $!
  done > "$WORK/pages"
  sleep 1
}
close_pages() { xargs -r kill < "$WORK/pages" 2>/dev/null || true; rm -f "$WORK/pages"; sleep 0.3; }
cpu_share() { # the gateway's CPU over 10 s, in % of one core
  local hz t0 t1; hz=$(getconf CLK_TCK)
  t0=$(awk '{print $14+$15}' "/proc/$UP_PID/stat"); sleep 10; t1=$(awk '{print $14+$15}' "/proc/$UP_PID/stat")
  awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN { printf "%.2f", (b-a)/hz/10*100 }'
}
if [ "$PAGES" -gt 0 ]; then
  idle=$(cpu_share); open_pages; busy=$(cpu_share); close_pages
  echo "dashboard: gateway CPU at idle $idle% of a core without pages, $busy% with $PAGES live pages open (target: under 5%)"
  # One client at a time: how long one page load waits, not the gateway's saturation.
  ui=$(wrk -t1 -c1 -d3s --latency "$GW/ui")
  u2=$(to_ms "$(echo "$ui" | awk '$1=="50%" {print $2}')"); u3=$(to_ms "$(echo "$ui" | awk '$1=="99%" {print $2}')")
  echo "dashboard: GET /ui one client at a time: p50 $u2 ms, p99 $u3 ms (target: under 10 ms), $(curl -s "$GW/ui" "$GW/ui/app.js" "$GW/ui/app.css" | wc -c) bytes with script and styles (target: under 100 KB)"
fi
declare -a P
echo "wrk -t2 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, $(nproc) cores"
printf '%-6s %-10s %12s %10s %10s %8s\n' round target requests/s p50_ms p99_ms ratio
declare -a G N D K
for r in $(seq "$ROUNDS"); do
  if [ -n "$KGW" ]; then
    read -r k1 k2 k3 < <(run kube "$KGW")
    printf '%-6s %-10s %12s %10s %10s %8s\n' "$r" kubernetes "$k1" "$k2" "$k3" ""
    K+=("$k1 $k2 $k3")
  fi
  read -r g1 g2 g3 < <(run gateway "$GW/function/fixed")
  read -r n1 n2 n3 < <(run nginx "http://127.0.0.1:$PROXY_PORT/")
  read -r d1 d2 d3 < <(run direct "$BACKEND/")
  ratio=$(awk -v g="$g1" -v n="$n1" 'BEGIN { printf "%.2f", g/n }')
  printf '%-6s %-10s %12s %10s %10s %8s\n' "$r" cubeflash "$g1" "$g2" "$g3" "$ratio" "$r" nginx "$n1" "$n2" "$n3" "" "$r" direct "$d1" "$d2" "$d3" ""
  G+=("$g1 $g2 $g3"); N+=("$n1 $n2 $n3"); D+=("$d1 $d2 $d3")
  if [ "$PAGES" -gt 0 ]; then
    open_pages
    read -r p1 p2 p3 < <(run pages "$GW/function/fixed")
    close_pages
    printf '%-6s %-10s %12s %10s %10s %8s\n' "$r" "+$PAGES pages" "$p1" "$p2" "$p3" ""
    P+=("$p1 $p2 $p3")
  fi
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { local i=$1; shift; for x in "$@"; do echo "$x" | awk -v i="$i" '{print $i}'; done | median; }
gr=$(col 1 "${G[@]}"); nr=$(col 1 "${N[@]}")
g50=$(col 2 "${G[@]}"); n50=$(col 2 "${N[@]}"); d50=$(col 2 "${D[@]}")
g99=$(col 3 "${G[@]}"); n99=$(col 3 "${N[@]}"); d99=$(col 3 "${D[@]}")
if [ -n "$KGW" ]; then
  kr=$(col 1 "${K[@]}"); k50=$(col 2 "${K[@]}"); k99=$(col 3 "${K[@]}")
  awk -v k="$kr" -v g="$gr" -v k50="$k50" -v k99="$k99" 'BEGIN { printf "kubernetes backend: %s req/s (p50 %s ms, p99 %s ms): %.2f of the local backend (target: within 5%%)\n", k, k50, k99, k/g }'
fi
if [ "$PAGES" -gt 0 ]; then
  pr=$(col 1 "${P[@]}"); p50=$(col 2 "${P[@]}"); p99=$(col 3 "${P[@]}")
  awk -v p="$pr" -v g="$gr" -v p50="$p50" -v p99="$p99" -v g50="$g50" -v g99="$g99" -v n="$PAGES" 'BEGIN { printf "with %d live pages: %s req/s (p50 %s ms, p99 %s ms): %.3f of the gateway without them (p50 %s, p99 %s)\n", n, p, p50, p99, p/g, g50, g99 }'
fi
echo "medians: cubeflash $gr req/s (p50 $g50 ms, p99 $g99 ms); nginx $nr req/s (p50 $n50 ms, p99 $n99 ms); direct p50 $d50 ms, p99 $d99 ms"
awk -v g="$gr" -v n="$nr" -v g50="$g50" -v n50="$n50" -v d50="$d50" -v g99="$g99" -v n99="$n99" -v d99="$d99" 'BEGIN {
  printf "requests/s ratio cubeflash/nginx: %.2f (target >= 1.0)\n", g/n
  printf "added latency over direct: cubeflash p50 %+.3f ms, p99 %+.3f ms; nginx p50 %+.3f ms, p99 %+.3f ms\n", g50-d50, g99-d99, n50-d50, n99-d99
}'
