#!/usr/bin/env bash
# Installs the Debian packages ketch needs, only those missing.
#   install-deps.sh run    what the daemon needs at run time (and to build)
#   install-deps.sh test   plus what the test suite needs (runc and crun: the
#                          runtime handler tests run them as external runtimes)
#   install-deps.sh bench  plus containerd, for the comparison
set -euo pipefail

build=(gcc protobuf-compiler pkg-config libseccomp-dev)
run=(iptables iproute2 containernetworking-plugins util-linux libseccomp2)
test=(docker-registry busybox-static zstd openssl systemd dbus-daemon dbus-bin runc crun)
bench=(containerd)

want=("${build[@]}" "${run[@]}")
case "${1:-run}" in
  run) ;;
  test) want+=("${test[@]}") ;;
  bench) want+=("${test[@]}" "${bench[@]}") ;;
  *) echo "usage: $0 run|test|bench" >&2; exit 2 ;;
esac

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Services these packages ship (registry, containerd) are started by whoever
  # needs them, on private ports and sockets; keep the postinst from starting them.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The streaming tests also drive ketch with Python's websocket-client, a
# WebSocket client we did not write.
if [ "${1:-run}" != run ] && ! python3 -c 'import websocket' >/dev/null 2>&1; then
  echo "installing: websocket-client (pip)"
  python3 -m pip install --quiet websocket-client \
    || python3 -m pip install --quiet --break-system-packages websocket-client
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: ketch needs a Rust toolchain (1.88 or newer, edition 2024) on PATH" >&2
  exit 1
fi
