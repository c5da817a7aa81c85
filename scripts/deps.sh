#!/bin/sh
# Installs the Debian packages resplice's build, tests and testbed need.
# Idempotent: prints nothing and touches nothing when all are installed.
set -eu

PKGS="
build-essential clang llvm pkg-config
libcmocka-dev libhttp-parser-dev libsodium-dev
libnetfilter-queue-dev libpcap-dev libnl-3-dev libnl-route-3-dev
libbpf-dev bpftool libelf-dev zlib1g-dev
mininet openvswitch-switch bridge-utils iptables iproute2
iputils-ping ethtool tcpdump iperf3 procps psmisc net-tools curl
gnuplot-nox
"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to install:$missing" >&2
    exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
