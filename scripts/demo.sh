#!/usr/bin/env bash
# demo.sh - see relayup at work in about two minutes, on this machine alone.
#
# Builds a simulated office (scripts/lab.sh): a server and 4 workstations,
# each allowed 80 Mbit/s up to the server.  Uploads a 256 MiB file from the
# client the usual way (curl), then with relayup, which has the 3 peer
# workstations upload shares at the same time.  Prints both times, the
# speedup and the MD5 the server verified.  Run as root on Debian/Ubuntu.
set -euo pipefail
umask 022

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # the repository root
readonly LAB=scripts/lab.sh
readonly DIR=/tmp/relayup-lab            # lab.sh's default state directory
readonly PEERS=3 RATE=80 SIZE_MIB=256
readonly RELEASES=/home/rlab-server/releases
readonly URL=ftp://198.18.0.1$RELEASES

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	echo "Usage: ${0##*/}   (as root; no options)"
	echo "Installs openssh-server, vsftpd, curl and iproute2 if missing, builds relayup,"
	echo "brings up a lab of $PEERS peers at $RATE Mbit/s each, uploads a $SIZE_MIB MiB file with"
	echo "curl and then with relayup, prints both times, and tears the lab down."
	exit 0
fi

# Bold headings on a terminal, plain text otherwise.
if [[ -t 2 && -z ${NO_COLOR:-} ]]; then B=$'\e[1m' N=$'\e[0m'; else B="" N=""; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N" >&2; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run me as root (the lab uses network namespaces): sudo $0"

# --- 1. what the lab needs --------------------------------------------------
missing=()
[[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
[[ -x /usr/sbin/vsftpd ]] || missing+=(vsftpd)
command -v curl >/dev/null || missing+=(curl)
{ command -v ip && command -v tc && command -v ss; } >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
	step "Installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
PATH=$PATH:$HOME/.cargo/bin
command -v cargo >/dev/null ||
	die "Rust is needed to build relayup (1.88 or newer): https://rustup.rs, then run me again"

# --- 2. relayup -------------------------------------------------------------
step "Building relayup (cargo build --release)"
cargo build --release --quiet
RELAYUP=target/release/relayup

# --- 3. the office ----------------------------------------------------------
WORK=$(mktemp -d /tmp/relayup-demo.XXXXXX)
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	step "Tearing the lab down"
	rm -f "$RELEASES"/demo-*.bin        # our uploads (every namespace shares this disk)
	"$LAB" down || true
	rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Bringing up the lab: server + client + $PEERS peers, $RATE Mbit/s each to the server"
"$LAB" up --peers "$PEERS" --rate "$RATE" --relayup "$RELAYUP"
rm -f "$RELEASES"/demo-*.bin            # left over from an interrupted demo?

# --- 4. something to upload -------------------------------------------------
FILE=$WORK/demo-$SIZE_MIB-MiB.bin
step "Making a $SIZE_MIB MiB random file"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$FILE"
MD5=$(md5sum "$FILE" | cut -d' ' -f1)
echo "source md5 $MD5" >&2

# seconds since the epoch, with decimals
now() { date +%s.%N; }

# --- 5. the usual way: curl from the client, alone --------------------------
step "Direct upload: curl -T from the client (one $RATE Mbit/s uplink)"
(umask 077 && printf 'machine 198.18.0.1 login rlab-server password %s\n' "$(cat "$DIR/server.pass")" >"$WORK/netrc")
if [[ -t 2 ]]; then progress=(--progress-bar); else progress=(-sS); fi
t0=$(now)
"$LAB" exec client curl "${progress[@]}" --fail --netrc-file "$WORK/netrc" -T "$FILE" "$URL/demo-direct.bin" >/dev/null
t1=$(now)
DIRECT=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
echo "curl: $DIRECT s" >&2

# --- 6. relayup: the client and its 3 peers upload at once ------------------
# Its progress bars go to stderr when that is a terminal (plain lines otherwise).
step "relayup send: client + $PEERS peers in parallel ($DIR/peers.toml)"
t0=$(now)
"$LAB" exec client "$RELAYUP" send "$FILE" --config "$DIR/peers.toml" --dest demo-relayup.bin
t1=$(now)
RELAYED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')

# relayup already compared the server's MD5 with the source's (exit 0 = equal);
# ask the server once more, over SSH, the way you would by hand.
SERVER_MD5=$("$LAB" exec client ssh -F "$DIR/ssh_config" rlab-server@198.18.0.1 \
	md5sum "$RELEASES/demo-relayup.bin" | cut -d' ' -f1)
[[ $SERVER_MD5 == "$MD5" ]] || die "the server's md5 $SERVER_MD5 differs from the source's $MD5"

# --- 7. the verdict ---------------------------------------------------------
step "Result: $SIZE_MIB MiB"
awk -v d="$DIRECT" -v r="$RELAYED" -v m="$MD5" -v s="$SIZE_MIB" 'BEGIN {
	mb = s * 1048576 / 1e6
	printf "  direct (curl)         %6.1f s  %5.1f MB/s\n", d, mb / d
	printf "  relayup (+3 peers)    %6.1f s  %5.1f MB/s\n", r, mb / r
	printf "  speedup               %6.2fx\n", d / r
	printf "  md5 on the server     %s (equals the source)\n", m
}'
