#!/usr/bin/env bash
# Render cost at 100 and at 1,000 functions. Builds two throwaway repos of python
# functions (each with an http trigger, a schedule and a baseline, so every template runs)
# and times, as whole processes, best of RUNS (default 5):
#   validate   load + render + check every object in memory, write nothing (the compute)
#   rerender   `cubeflash render` over an up-to-date generated/ (nothing to write)
#   fresh      `cubeflash render` with no generated/ yet (writes every file)
#   cp -r      copying the same generated/ tree: the peer for the cost of creating the files
#
#   bench/render-scale.sh [path/to/cubeflash]      (default: target/release/cubeflash)
set -euo pipefail
BIN="$(realpath "${1:-target/release/cubeflash}")"
RUNS="${RUNS:-5}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }

make_repo() { # make_repo DIR N
  local dir=$1 n=$2
  mkdir -p "$dir/functions"
  printf 'namespace: bench\n' > "$dir/cubeflash.yaml"
  for i in $(seq -w 1 "$n"); do
    local f="$dir/functions/fn-$i"
    mkdir -p "$f"
    cat > "$f/function.yaml" <<YAML
name: fn-$i
runtime: python
handler: handler.py
env: { INDEX: "$i" }
triggers:
  - http: { path: /fn-$i, methods: [GET, POST] }
  - schedule: { cron: "*/5 * * * *", body: "{}" }
scale: { min: 0, max: 10, idle: 60s }
resources: { cpu: 100m, memory: 128Mi }
baseline: { replicas: 1 }
YAML
    printf 'def handle(req):\n    return {"fn": %s}\n' "$i" > "$f/handler.py"
  done
}

best() { # best PREPARE COMMAND... -> best wall seconds of RUNS; PREPARE runs untimed before each
  local prepare=$1 b=""
  shift
  for _ in $(seq "$RUNS"); do
    eval "$prepare"
    local t
    /usr/bin/time -f '%e' -o "$WORK/time" "$@" >/dev/null 2>&1
    t=$(tail -n 1 "$WORK/time")
    if [ -z "$b" ] || awk "BEGIN{exit !($t < $b)}"; then b=$t; fi
  done
  echo "$b"
}

echo "cubeflash render scale, best of $RUNS, $(nproc) cores; seconds (whole process)"
printf '%10s %9s %9s %9s %9s %8s\n' functions validate rerender fresh "cp -r" objects
for n in 100 1000; do
  dir="$WORK/r$n"
  make_repo "$dir" "$n"
  "$BIN" -C "$dir" render >/dev/null
  objects=$(find "$dir/generated" -name '*.yaml' | wc -l)
  v=$(best ":" "$BIN" -C "$dir" validate)
  r=$(best ":" "$BIN" -C "$dir" render)
  f=$(best "rm -rf '$dir/generated'; sync" "$BIN" -C "$dir" render)
  c=$(best "rm -rf '$WORK/copy'; sync" cp -r "$dir/generated" "$WORK/copy")
  printf '%10s %9s %9s %9s %9s %8s\n' "$n" "$v" "$r" "$f" "$c" "$objects"
  eval "v$n=$v f$n=$f"
done
awk "BEGIN{printf \"growth 1000/100: validate %.1fx, fresh %.1fx (10x = linear)\n\", $v1000/$v100, $f1000/$f100}"
