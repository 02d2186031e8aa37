#!/usr/bin/env bash
# RunPodSandbox on a bridge network, and how much of it is CNI (root).
#
# Starts the release ketch on private dirs and socket under a fresh
# /var/tmp/ketch-podnet.XXXXXX with a private bridge network (Debian's
# bridge + host-local + portmap, its own bridge and /24), lets ketch-bench
# run ITERATIONS pod lifecycles (RunPodSandbox timed by the client; Stop
# and Remove untimed), then reads ketch's `pod network set up ... cni_ms=`
# log lines for the time spent in CNI ADD (loopback and the network's
# plugins). Prints median and p99 of both. Removes everything it made.
#
#   ITERATIONS=50   measured RunPodSandbox calls
set -euo pipefail

ITERATIONS=${ITERATIONS:-50}
CARGO=${CARGO:-cargo}
cd "$(dirname "$0")/.."
say() { echo "pod-network: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }

$CARGO build --release --locked --bin ketch --bin ketch-bench >&2
TARGET_DIR=${CARGO_TARGET_DIR:-target}
KETCH_BIN=$(readlink -f "$TARGET_DIR/release/ketch")
BENCH_BIN=$(readlink -f "$TARGET_DIR/release/ketch-bench")

DIR=$(mktemp -d /var/tmp/ketch-podnet.XXXXXX)
TAG=$(basename "$DIR" | tr -dc 'a-zA-Z0-9' | tail -c 6)
BRIDGE="kpn$TAG"
NET="ketch-podnet-$TAG"
KETCH_PID=""
while :; do
  SUBNET="10.$((RANDOM % 150 + 100)).$((RANDOM % 256))"
  ip -4 route show table all | grep -q "$SUBNET\." || break
done

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "$KETCH_PID" ] && kill -0 "$KETCH_PID" 2>/dev/null; then
    timeout 120 "$BENCH_BIN" sweep --endpoint "$DIR/ketch.sock" >/dev/null
    kill -TERM "$KETCH_PID"
    wait "$KETCH_PID" 2>/dev/null
  fi
  awk '{print $5}' /proc/self/mountinfo | grep "^$DIR/" | sort -r | xargs -r -n1 umount -l
  ip link del "$BRIDGE" 2>/dev/null
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$DIR/cni" "$DIR/root" "$DIR/run" "$DIR/logs"
cat >"$DIR/cni/10-podnet.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NET",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "ranges": [[{"subnet": "$SUBNET.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$DIR/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
printf '[cni]\nbin_dirs = ["/usr/lib/cni"]\n' >"$DIR/ketch.toml"
"$KETCH_BIN" serve --config "$DIR/ketch.toml" --root-dir "$DIR/root" --state-dir "$DIR/run" \
  --listen "$DIR/ketch.sock" --cni-conf-dir "$DIR/cni" --log-level info >"$DIR/ketch.log" 2>&1 &
KETCH_PID=$!
for _ in $(seq 300); do [ -S "$DIR/ketch.sock" ] && break; sleep 0.1; done

# No image: ketch-bench then times the pod calls alone.
"$BENCH_BIN" run --endpoint "$DIR/ketch.sock" --label ketch --image 127.0.0.1:1/none:latest \
  --iterations "$ITERATIONS" --warmup 0 --concurrency 1 --pull-iterations 0 \
  --memory-pods 0 --list-containers 0 --work-dir "$DIR/logs" \
  --json "$DIR/run.json" >"$DIR/bench.out" 2>&1 || { cat "$DIR/bench.out" >&2; exit 1; }
echo "                                              n   median      p90      p99      max"
grep -E "RunPodSandbox|StopPodSandbox|RemovePodSandbox" "$DIR/bench.out" | head -3

# The first ITERATIONS setups and teardowns are the timed lifecycles'.
stats() { # label
  sort -n | awk -v label="$1" '{v[NR] = $1} END {
    if (NR == 0) { print label ": no cni_ms lines in the log"; exit 1 }
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    i = int(NR * 0.99 + 0.999); if (i > NR) i = NR
    printf "%s (ketch log, n=%d): median %.1f ms, p99 %.1f ms\n", label, NR, m, v[i]
  }'
}
grep 'pod network set up' "$DIR/ketch.log" | grep -o 'cni_ms=[0-9.]*' | head -n "$ITERATIONS" |
  cut -d= -f2 | stats "CNI ADD in RunPodSandbox"
grep 'pod network torn down' "$DIR/ketch.log" | grep -o 'cni_ms=[0-9.]*' | head -n "$ITERATIONS" |
  cut -d= -f2 | stats "CNI DEL in StopPodSandbox"
