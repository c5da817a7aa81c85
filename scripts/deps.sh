#!/bin/sh
# Installs the Debian packages resplice's build, tests and testbed need.
# Idempotent: prints nothing and touches nothing when all are installed.
set -eu

PKGS="
build-essential clang llvm pkg-config
libcmocka-dev libhttp-parser-dev libsodium-dev libsqlite3-dev
libnetfilter-queue-dev libpcap-dev libnl-3-dev libnl-route-3-dev libnl-genl-3-dev
libbpf-dev bpftool libelf-dev zlib1g-dev
mininet openvswitch-switch bridge-utils iptables nftables iproute2
iputils-ping ethtool tcpdump iperf3 procps psmisc net-tools curl
gnuplot-nox haproxy keepalived chromium chromium-driver python3-selenium
roundcube roundcube-core roundcube-sqlite3 php-cgi php-cli php-sqlite3 lighttpd dovecot-imapd
linux-headers-amd64 linux-image-amd64 qemu-system-x86 busybox-static cpio
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

# The testbed starts lighttpd, dovecot, OVS ... itself, inside Mininet hosts:
# keep the packages' maintainer scripts from starting system-wide copies
# (invoke-rc.d asks policy-rc.d; 101 = "action forbidden").
POLICY=${RS_POLICY_RC:-/usr/sbin/policy-rc.d}    # overridable for testing this script
LOG=$(mktemp /tmp/resplice-deps.XXXXXX)
cleanup() { rm -f "$LOG" ${made_policy:+"$POLICY"}; }
trap cleanup EXIT
trap 'exit 130' INT TERM
made_policy=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# resplice deps.sh: no service starts during install\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    made_policy=1
fi
# Roundcube's database is made per backend by roundcube/deploy.py: no
# dbconfig-common database (it would try a local MySQL/PostgreSQL).
if command -v debconf-set-selections >/dev/null 2>&1; then
    echo "roundcube-core roundcube/dbconfig-install boolean false" | debconf-set-selections
fi

# Quiet unless it fails: then the whole apt output.
# shellcheck disable=SC2086
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "deps: apt-get failed" >&2
    exit 1
fi
