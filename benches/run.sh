#!/usr/bin/env bash
# Benchmarks ketch against containerd, call for call, on this machine (root).
#
# Installs what is missing (containerd, runc, docker-registry, busybox-static,
# CNI plugins: deploy/install-deps.sh bench), builds ketch and ketch-bench in
# release mode, then under one fresh directory /var/tmp/ketch-bench.XXXXXX:
#   - a loopback registry (Debian's docker-registry, free port, temp storage)
#     with the images ketch-bench builds and pushes: busybox, a pause image
#     for containerd's sandboxes, and a ~100 MiB image of five layers;
#   - one bridge CNI config both runtimes use (private bridge, IPAM state in
#     the directory);
#   - containerd with its CRI plugin and ketch, each on private root and
#     state dirs and socket.
# Both daemons run side by side; ketch-bench drives them in turns, ROUNDS
# times, swapping the order every round, so the machine's drift hits both
# alike. Then one table: each figure for ketch, for containerd, and the ratio
# ketch/containerd; the same as JSON in $BENCH_JSON. The header names the
# kernel, the cgroup layout and whether a cgroup hierarchy is mounted with
# favordynmods (a stock kernel has it off: every cgroup migration then
# waits for an RCU grace period, so figures taken with it on flatter any
# runtime that migrates processes), and the filesystem under each runtime's
# state dir.
#
# When critest (cri-tools) is on PATH, its own benchmark runs too, against
# both runtimes in turns (`critest -benchmark`, CRITEST_NUMBER pods and
# containers each), with a second table; otherwise a line says it was
# skipped. This script never builds or fetches critest. Its containers use
# critest's default image (registry.k8s.io/e2e-test-images/busybox), which
# both runtimes must be able to pull.
#
# On exit (also on error or Ctrl-C) it removes every pod it made, stops what
# it started, unmounts and deletes what it made, and checks that no process,
# mount, bridge, cgroup or file of it is left; it fails if one is.
#
# Settings (environment):
#   ROUNDS=3                   turns per runtime
#   ITERATIONS=10              measured calls per operation per turn
#   CONCURRENCY=1,10,50        pods started at once
#   CONCURRENCY_ITERATIONS=1   measured concurrent starts per N per turn
#   PULL_ITERATIONS=1          cold pulls per turn
#   LIST_CONTAINERS=100        containers present for the List calls
#   MEMORY_PODS=50             pods running for the memory figures
#   RUNTIMES="ketch containerd"  the first is the numerator of the ratios;
#                              ketch-runc is the same ketch daemon with its pods
#                              on the `runc` runtime handler (Debian's runc)
#   BENCH_JSON=target/bench/results.json
#   KETCH_BIN_DIR=             ketch and ketch-shim from this directory
#                              instead of building them (e.g. an older build)
#   CRITEST_NUMBER=30          pods and containers of critest's benchmark
#   CRITEST_ROUNDS=2           critest turns per runtime (order swapped each
#                              turn: the first to run meets the teardown of
#                              the main rounds' last 50 pods)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
ITERATIONS=${ITERATIONS:-10}
CONCURRENCY=${CONCURRENCY:-1,10,50}
CONCURRENCY_ITERATIONS=${CONCURRENCY_ITERATIONS:-1}
PULL_ITERATIONS=${PULL_ITERATIONS:-1}
LIST_CONTAINERS=${LIST_CONTAINERS:-100}
MEMORY_PODS=${MEMORY_PODS:-50}
RUNTIMES=${RUNTIMES:-ketch containerd}
BENCH_JSON=${BENCH_JSON:-target/bench/results.json}
KETCH_BIN_DIR=${KETCH_BIN_DIR:-}
CRITEST_NUMBER=${CRITEST_NUMBER:-30}
CRITEST_ROUNDS=${CRITEST_ROUNDS:-2}
CARGO=${CARGO:-cargo}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}

cd "$(dirname "$0")/.."
say() { echo "bench: $*" >&2; }
die() { say "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it starts container runtimes)"

./deploy/install-deps.sh bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -n "$KETCH_BIN_DIR" ]; then
  say "building ketch-bench (release); ketch from $KETCH_BIN_DIR"
  $CARGO build --release --locked --bin ketch-bench
  KETCH_BIN=$(readlink -f "$KETCH_BIN_DIR/ketch")
  SHIM_BIN=$(readlink -f "$KETCH_BIN_DIR/ketch-shim")
else
  say "building ketch and ketch-bench (release)"
  $CARGO build --release --locked --bin ketch --bin ketch-shim --bin ketch-bench
  KETCH_BIN=$(readlink -f "$TARGET_DIR/release/ketch")
  SHIM_BIN=$(readlink -f "$TARGET_DIR/release/ketch-shim")
fi
BENCH_BIN=$(readlink -f "$TARGET_DIR/release/ketch-bench")
[ -x "$KETCH_BIN" ] && [ -x "$SHIM_BIN" ] && [ -x "$BENCH_BIN" ] || die "binaries not found under $TARGET_DIR/release"
case "$BENCH_JSON" in /*) ;; *) BENCH_JSON="$PWD/$BENCH_JSON" ;; esac

DIR=$(mktemp -d /var/tmp/ketch-bench.XXXXXX)
chmod 0711 "$DIR"
TAG=$(basename "$DIR" | tr -dc 'a-zA-Z0-9' | tail -c 6)
BRIDGE="kbench$TAG"                      # 12 chars: within IFNAMSIZ
CGROUP_PARENT="/ketch-bench-$TAG"
CNI_NET="ketch-bench-$TAG"
CD="$DIR/containerd"
KD="$DIR/ketch"
CTRD_SOCK="$CD/containerd.sock"
KETCH_SOCK="$KD/run/ketch.sock"
REG_PID="" CTRD_PID="" KETCH_PID="" DRIVER_PID=""

# What exists before, so cleanup removes only what this run made.
NETNS_BEFORE=$(ls /run/netns 2>/dev/null || true)
RUN_CONTAINERD_EXISTED=no; [ -e /run/containerd ] && RUN_CONTAINERD_EXISTED=yes
SHIM_SOCKS_BEFORE=$(ls /run/containerd/s 2>/dev/null || true)
# Directories the runtimes or CNI may create on first use.
NEW_DIRS=()
for d in /run/netns /var/lib/cni /var/lib/cni/results; do [ -e "$d" ] || NEW_DIRS+=("$d"); done

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

stop_pid() { # pid name
  local pid=$1 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then say "$2 ignored SIGTERM for 15s; killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

# Pids of processes of this run: in its cgroups, or naming its directory
# (shims carry the containerd socket path) or running its ketch binaries.
leftover_pids() {
  local p cmd exe
  {
    find /sys/fs/cgroup -path "*$CGROUP_PARENT*" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    for p in /proc/[0-9]*; do
      p=${p#/proc/}
      [ "$p" = $$ ] && continue
      cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
      exe=$(readlink "/proc/$p/exe" 2>/dev/null || true)
      case "$cmd" in *"$DIR"*) echo "$p"; continue ;; esac
      case "$exe" in "$KETCH_BIN" | "$SHIM_BIN") echo "$p" ;; esac
    done
  } | sort -un | grep -vx "$$" || true
}

our_mounts() {
  awk '{print $5}' /proc/self/mountinfo | sed 's/\\040/ /g' |
    grep -E "^$DIR(/|\$)" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- || true
}

new_netns() {
  local n
  for n in $(ls /run/netns 2>/dev/null); do
    grep -qx "$n" <<<"$NETNS_BEFORE" || echo "$n"
  done
}

cleanup() {
  local rc=$? p m n i left=()
  trap - EXIT INT TERM
  set +e
  say "cleaning up"
  stop_pid "$DRIVER_PID" ketch-bench
  # Pods and containers first, through the daemons, while they run.
  alive "$KETCH_PID" && timeout 300 "$BENCH_BIN" sweep --endpoint "$KETCH_SOCK"
  alive "$CTRD_PID" && timeout 300 "$BENCH_BIN" sweep --endpoint "$CTRD_SOCK"
  stop_pid "$KETCH_PID" ketch
  stop_pid "$CTRD_PID" containerd
  stop_pid "$REG_PID" docker-registry
  # Whatever outlived its daemon: shims, monitors, container processes.
  for p in $(leftover_pids); do kill -KILL "$p" 2>/dev/null; done
  sleep 0.5
  for m in $(our_mounts); do umount -l "$m" 2>/dev/null; done
  for n in $(new_netns); do umount -l "/run/netns/$n" 2>/dev/null; rm -f "/run/netns/$n"; done
  ip link del "$BRIDGE" 2>/dev/null
  rm -f /var/lib/cni/results/"$CNI_NET"-* 2>/dev/null
  find /sys/fs/cgroup -depth -type d -path "*$CGROUP_PARENT*" -exec rmdir {} \; 2>/dev/null
  if [ "$RUN_CONTAINERD_EXISTED" = no ]; then
    rm -rf /run/containerd
  else
    for n in $(ls /run/containerd/s 2>/dev/null); do
      grep -qx "$n" <<<"$SHIM_SOCKS_BEFORE" || rm -f "/run/containerd/s/$n"
    done
  fi
  rm -rf "$DIR"
  for ((i = ${#NEW_DIRS[@]} - 1; i >= 0; i--)); do rmdir "${NEW_DIRS[i]}" 2>/dev/null; done

  # Verify.
  [ -n "$(leftover_pids)" ] && left+=("processes: $(leftover_pids | tr '\n' ' ')")
  [ -n "$(our_mounts)" ] && left+=("mounts: $(our_mounts | tr '\n' ' ')")
  [ -n "$(new_netns)" ] && left+=("netns: $(new_netns | tr '\n' ' ')")
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  [ -n "$(find /sys/fs/cgroup -type d -path "*$CGROUP_PARENT*" 2>/dev/null)" ] && left+=("cgroup $CGROUP_PARENT")
  [ -e "$DIR" ] && left+=("directory $DIR")
  if [ "${#left[@]}" -gt 0 ]; then
    say "LEFT BEHIND: ${left[*]}"
    [ "$rc" = 0 ] && rc=1
  else
    say "clean: no process, mount, network namespace, bridge, cgroup or directory left"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_socket() { # path pid name log
  local i
  for i in $(seq 300); do
    [ -S "$1" ] && return 0
    alive "$2" || { tail -n 30 "$4" >&2; die "$3 exited during start"; }
    sleep 0.1
  done
  tail -n 30 "$4" >&2
  die "$3 did not create $1 within 30s"
}

# --- the loopback registry and the images -----------------------------------
mkdir -p "$DIR/registry" "$DIR/runs" "$DIR/cni/net.d" "$DIR/cni/ipam" "$CD" "$KD"
REG_PORT=$("$BENCH_BIN" free-port)
REGISTRY="127.0.0.1:$REG_PORT"
cat >"$DIR/registry/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
setsid docker-registry serve "$DIR/registry/config.yml" >"$DIR/registry/log" 2>&1 &
REG_PID=$!
say "registry at $REGISTRY (pid $REG_PID); building and pushing images"
"$BENCH_BIN" push-images --registry "$REGISTRY" --env-file "$DIR/images.env"
# shellcheck disable=SC1091
. "$DIR/images.env"

# --- one CNI network for both runtimes --------------------------------------
# The bridge with host-local IPAM, as the configs containerd and CRI-O ship
# and `make run` installs. No `loopback` in the chain: each runtime brings
# `lo` up on its own (containerd runs the loopback plugin as a network of
# its own, ketch sets the flag when it makes the namespace), so a chained
# one would be a second, redundant exec for both.
cat >"$DIR/cni/net.d/10-ketch-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.250.0.0/22" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$DIR/cni/ipam"
      }
    }
  ]
}
EOF

# --- containerd --------------------------------------------------------------
start_containerd() {
  cat >"$CD/config.toml" <<EOF
version = 2
root = "$CD/root"
state = "$CD/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CD/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$BENCH_PAUSE_IMAGE"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # This host refuses negative oom_score_adj without CAP_SYS_RESOURCE.
    restrict_oom_score_adj = true
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "$CD/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN_DIR"
      conf_dir = "$DIR/cni/net.d"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY"]
      endpoint = ["http://$REGISTRY"]
EOF
  setsid containerd --config "$CD/config.toml" >"$CD/log" 2>&1 &
  CTRD_PID=$!
  wait_socket "$CTRD_SOCK" "$CTRD_PID" containerd "$CD/log"
  say "containerd $(containerd --version | awk '{print $3}') at $CTRD_SOCK (pid $CTRD_PID)"
}

# --- ketch --------------------------------------------------------------------
start_ketch() {
  [ -n "$KETCH_PID" ] && return 0
  # The runc handler, for the ketch-runc runs.
  printf '[runtime_handlers.runc]\npath = "%s"\n' "$(command -v runc || echo /usr/sbin/runc)" >"$KD/ketch.toml"
  setsid "$KETCH_BIN" serve --config "$KD/ketch.toml" --root-dir "$KD/root" \
    --state-dir "$KD/run" --listen "$KETCH_SOCK" --cni-conf-dir "$DIR/cni/net.d" \
    --cni-bin-dir "$CNI_BIN_DIR" --log-level warn >"$KD/log" 2>&1 &
  KETCH_PID=$!
  wait_socket "$KETCH_SOCK" "$KETCH_PID" ketch "$KD/log"
  say "ketch $("$KETCH_BIN" --version | awk '{print $2}') at $KETCH_SOCK (pid $KETCH_PID)"
}

for rt in $RUNTIMES; do
  case "$rt" in
    ketch | ketch-runc) start_ketch ;;
    containerd) start_containerd ;;
    *) die "unknown runtime $rt (ketch, ketch-runc or containerd)" ;;
  esac
done

# --- the runs, in turns -------------------------------------------------------
run_driver() { # runtime round
  local rt=$1 round=$2 args=()
  case "$rt" in
    ketch)
      args=(--endpoint "$KETCH_SOCK" --daemon-pid "$KETCH_PID"
        --proc-match "$SHIM_BIN" --proc-match monitor) ;;
    ketch-runc)
      args=(--endpoint "$KETCH_SOCK" --daemon-pid "$KETCH_PID" --runtime-handler runc
        --proc-match "$SHIM_BIN" --proc-match monitor) ;;
    containerd)
      args=(--endpoint "$CTRD_SOCK" --daemon-pid "$CTRD_PID"
        --proc-match containerd-shim-runc-v2 --proc-match "$CTRD_SOCK"
        --prepull "$BENCH_PAUSE_IMAGE") ;;
  esac
  say "round $round/$ROUNDS: $rt"
  # In the background, so a signal to this script is handled at once.
  "$BENCH_BIN" run "${args[@]}" --label "$rt" \
    --image "$BENCH_IMAGE" --pull-image "$BENCH_PULL_IMAGE" \
    --iterations "$ITERATIONS" --concurrency "$CONCURRENCY" \
    --concurrency-iterations "$CONCURRENCY_ITERATIONS" \
    --pull-iterations "$PULL_ITERATIONS" --list-containers "$LIST_CONTAINERS" \
    --memory-pods "$MEMORY_PODS" --cgroup-parent "$CGROUP_PARENT" \
    --work-dir "$DIR" --json "$DIR/runs/$round-$rt.json" >"$DIR/runs/$round-$rt.txt" &
  DRIVER_PID=$!
  if ! wait "$DRIVER_PID"; then
    say "round $round: the $rt run failed; its figures are missing"
  fi
  DRIVER_PID=""
}

read -r -a order <<<"$RUNTIMES"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 0 ]; then
    reversed=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
    turn=("${reversed[@]}")
  else
    turn=("${order[@]}")
  fi
  for rt in "${turn[@]}"; do run_driver "$rt" "$round"; done
done

files=()
for rt in $RUNTIMES; do
  for f in "$DIR"/runs/*-"$rt".json; do [ -e "$f" ] && files+=("$f"); done
done
[ "${#files[@]}" -gt 0 ] || die "no run produced results"
mkdir -p "$(dirname "$BENCH_JSON")"
HOST_LINE=$("$BENCH_BIN" host)
# Where each runtime keeps its volatile state: ketch mounts a tmpfs on its
# state dir when it is on disk (this host's /run may be), containerd does not.
fs_of() { stat -f -c %T "$1" 2>/dev/null || echo "-"; }
STATE_LINE="ketch $(fs_of "$KD/run"), containerd $(fs_of "$CD/state"); root dirs on $(fs_of "$DIR")"

# --- critest's own benchmark, when critest is on PATH --------------------------
CRITEST_TABLE=""
run_critest() { # runtime round
  local rt=$1 round=$2 sock out
  case "$rt" in ketch) sock=$KETCH_SOCK ;; containerd) sock=$CTRD_SOCK ;; esac
  out="$DIR/critest/$round-$rt"
  mkdir -p "$out"
  say "critest round $round/$CRITEST_ROUNDS: $rt"
  # In the background, so a signal to this script is handled at once.
  critest -benchmark --benchmarking-params-file "$DIR/critest/params.yaml" \
    --benchmarking-output-dir "$out" \
    --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
    --ginkgo.no-color >"$out.log" 2>&1 &
  DRIVER_PID=$!
  if ! wait "$DRIVER_PID"; then
    say "critest round $round: the $rt run failed (its log's tail below); its figures may be missing"
    tail -n 15 "$out.log" >&2
  fi
  DRIVER_PID=""
  "$BENCH_BIN" critest-import --label "$rt" --dir "$out" --json "$DIR/critest/$round-$rt.json" ||
    say "critest round $round: no results from $rt"
}
if command -v critest >/dev/null 2>&1; then
  mkdir -p "$DIR/critest"
  printf '%s\n' "containersNumber: $CRITEST_NUMBER" "containersNumberParallel: 1" \
    "podsNumber: $CRITEST_NUMBER" "podsNumberParallel: 1" "imagesNumber: 0" \
    >"$DIR/critest/params.yaml"
  for round in $(seq "$CRITEST_ROUNDS"); do
    turn=("${order[@]}")
    if [ $((round % 2)) = 0 ]; then
      turn=()
      for ((i = ${#order[@]} - 1; i >= 0; i--)); do turn+=("${order[i]}"); done
    fi
    for rt in "${turn[@]}"; do run_critest "$rt" "$round"; done
  done
  cfiles=()
  for rt in $RUNTIMES; do
    for f in "$DIR"/critest/*-"$rt".json; do [ -e "$f" ] && cfiles+=("$f"); done
  done
  if [ "${#cfiles[@]}" -gt 0 ]; then
    CRITEST_TABLE=$("$BENCH_BIN" report --json "${BENCH_JSON%.json}-critest.json" "${cfiles[@]}")
  else
    CRITEST_TABLE="critest -benchmark produced no results"
  fi
else
  CRITEST_TABLE="critest not on PATH: critest -benchmark skipped"
  say "$CRITEST_TABLE"
fi

echo
echo "ketch-bench: $ROUNDS rounds x $ITERATIONS iterations; pull image $((BENCH_PULL_IMAGE_BYTES / 1048576)) MiB in $BENCH_PULL_IMAGE_LAYERS layers; $(nproc) CPUs"
echo "host: $HOST_LINE"
echo "state dirs: $STATE_LINE"
"$BENCH_BIN" report --json "$BENCH_JSON" "${files[@]}"
echo
echo "critest -benchmark: $CRITEST_ROUNDS rounds x $CRITEST_NUMBER pods and containers"
echo "$CRITEST_TABLE"
echo
say "results as JSON: $BENCH_JSON"
