#!/usr/bin/env bash
# bench-release.sh - a release (many files) through the lab of scripts/lab.sh:
# relayup's one send of a directory against a loop of one `relayup send` per
# file and against `curl -T` of a tar of the directory.  Run `bench-release.sh
# --help`.
set -euo pipefail
umask 022

readonly PROG=${0##*/}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly LAB=$ROOT/scripts/lab.sh
readonly SERVER_IP=198.18.0.1
readonly SERVER_USER=rlab-server
readonly RELEASES=/home/rlab-server/releases
readonly URL=ftp://$SERVER_IP$RELEASES

RUNS=3
RATE=80
PEERS=3
MANY=0
METHOD_LIST=release,release-direct,loop,tar
BUILD=1
OUT=$ROOT/bench
LAB_DIR=/tmp/relayup-lab

usage() {
	cat <<EOF
Usage: $PROG [OPTIONS]

Sends a release through the lab (3 peers, every host capped at --rate Mbit/s
to the server) and writes bench/results-release.md.  Must run as root.

The release: 2 files of 100 MiB, 200 files of 1 MiB and an empty file.
Methods, each timed wall-clock, --runs times:
  relayup dist/           one send of the directory (append-merge)
  relayup dist/, direct   the same with direct writes (no [merge] login)
  loop of relayup send    one \`relayup send FILE\` per file (append-merge)
  curl -T dist.tar        the client alone, one upload of a tar of the
                          directory (made beforehand; the tar's time is
                          reported apart)
Efficiency = (bytes / sum of the caps) / measured time.

With --many N it sends N small files (1-64 KiB) instead, once per kind of
assembly, and reports the time, the client's peak RSS (GNU time) and how many
sends ("start" events) it took.

Options:
  --runs N       runs per method (default $RUNS; median reported)
  --rate MBIT    cap of every host (default $RATE)
  --methods LIST comma-separated subset of release,release-direct,loop,tar
  --many N       N small files instead of the release above
  --no-build     use target/release/relayup as it is
  --out DIR      where the results go (default bench/)
  -h, --help     this text
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
	--rate) RATE=${2:?--rate needs a value}; shift 2 ;;
	--many) MANY=${2:?--many needs a value}; shift 2 ;;
	--methods) METHOD_LIST=${2:?--methods needs a value}; shift 2 ;;
	--no-build) BUILD=0; shift ;;
	--out) OUT=${2:?--out needs a value}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $RATE =~ ^[0-9]+$ ]] || die "--rate must be a whole number of Mbit/s"
[[ $MANY =~ ^[0-9]+$ ]] || die "--many must be a number of files"
[[ $(id -u) -eq 0 ]] || die "must be run as root (the lab uses network namespaces)"

WORK=""
LAB_IS_UP=0
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	((LAB_IS_UP)) && { "$LAB" down --dir "$LAB_DIR" >/dev/null 2>&1 || log "warning: '$LAB down' failed"; }
	[[ -n $WORK && -d $WORK ]] && rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
WORK=$(mktemp -d /tmp/relayup-bench-release.XXXXXX)
chmod 0755 "$WORK"

cd "$ROOT"
if ((BUILD)); then
	log "building relayup (cargo build --release)"
	cargo build --release >&2 || die "cargo build --release failed"
fi
BIN=${CARGO_TARGET_DIR:-target}/release/relayup
[[ -x $BIN ]] || die "$BIN is missing"
install -m 0755 "$BIN" "$WORK/relayup"
readonly RELAYUP=$WORK/relayup
[[ -x /usr/bin/time ]] || apt-get install -y time >&2 || die "GNU time is needed"
BUILT_FROM="commit $(git --no-optional-locks rev-parse --short HEAD 2>/dev/null || echo "?")"
git --no-optional-locks diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || BUILT_FROM+=" + uncommitted changes"

log "lab up: $PEERS peers, $RATE Mbit/s each"
LAB_IS_UP=1
"$LAB" up --dir "$LAB_DIR" --peers "$PEERS" --rate "$RATE" --relayup "$RELAYUP" >"$WORK/lab-up.log" 2>&1 ||
	{ cat "$WORK/lab-up.log" >&2; die "lab.sh up failed"; }
(umask 077 && printf 'machine %s login %s password %s\n' "$SERVER_IP" "$SERVER_USER" "$(cat "$LAB_DIR/server.pass")" >"$WORK/netrc")

clean_hosts() {
	rm -rf -- "${RELEASES:?}"/* "$RELEASES"/.relayup-* 2>/dev/null || true
	local i
	for ((i = 1; i <= PEERS; i++)); do rm -rf -- /home/rlab-peer"$i"/.cache/relayup/* 2>/dev/null || true; done
	rm -rf -- "$WORK/state"
}

# The release, in $WORK/dist.
DIST=$WORK/dist
mkdir -p "$DIST"
if ((MANY)); then
	log "making $MANY files of 1-64 KiB"
	python3 - "$DIST" "$MANY" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(1)
for i in range(n):
    sub = os.path.join(d, "d%02d" % (i % 50))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "f%05d.bin" % i), "wb") as f:
        f.write(os.urandom(r.randint(1024, 64 * 1024)))
PY
else
	log "making the release: 2 x 100 MiB, 200 x 1 MiB, 1 empty file"
	head -c $((100 << 20)) /dev/urandom >"$DIST/big1.bin"
	head -c $((100 << 20)) /dev/urandom >"$DIST/big2.bin"
	for i in $(seq -w 1 200); do head -c $((1 << 20)) /dev/urandom >"$DIST/s$i.bin"; done
	: >"$DIST/empty"
fi
BYTES=$(du -sb --apparent-size "$DIST" | awk '{ print $1 }')
FILES=$(find "$DIST" -type f | wc -l)
IDEAL=$(awk -v b="$BYTES" -v r="$RATE" -v n="$((PEERS + 1))" 'BEGIN { printf "%.3f", b * 8 / (r * 1e6 * n) }')
log "$FILES files, $BYTES bytes; ideal $IDEAL s at $((PEERS + 1)) x $RATE Mbit/s"

# relayup_in_client CONFIG JSON ARGS...: relayup send in the client namespace,
# timed by GNU time into JSON.time (elapsed user system maxrss_kb).
relayup_in_client() {
	local config=$1 json=$2
	shift 2
	"$LAB" exec client env XDG_STATE_HOME="$WORK/state" /usr/bin/time -f '%e %U %S %M' -o "$json.time" \
		"$RELAYUP" send "$@" --config "$config" --json --no-progress >"$json" 2>"$json.err"
}

check_server() {
	local f
	while IFS= read -r f; do
		cmp -s "$f" "$RELEASES/${f#"$WORK"/}" || { log "DIFFERS on the server: $f"; return 1; }
	done < <(find "$DIST" -type f)
}

now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A TIMES
run_method() { # NAME: one timed run, checked
	local m=$1 t0 t1 j=$WORK/$1.json
	clean_hosts
	t0=$(now)
	case $m in
	release) relayup_in_client "$LAB_DIR/peers.toml" "$j" "$DIST" ;;
	release-direct) relayup_in_client "$LAB_DIR/peers-direct.toml" "$j" "$DIST" ;;
	loop)
		local f
		for f in "$DIST"/*; do
			relayup_in_client "$LAB_DIR/peers.toml" "$j" "$f" --dest "dist_$(basename "$f")" || return 1
		done
		;;
	tar) "$LAB" exec client curl -sS --fail --netrc-file "$WORK/netrc" -T "$WORK/dist.tar" "$URL/dist.tar" ;;
	esac || { log "$m failed: $(tail -n2 "$j.err" 2>/dev/null)"; return 1; }
	t1=$(now)
	[[ $m == release* ]] && { check_server || return 1; }
	TIMES[$m]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') "
	log "$m: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
}

mkdir -p "$OUT"
if ((MANY)); then
	RESULT=$OUT/results-release-many.md
	{
		echo "# $MANY small files through the lab"
		echo
		echo "$BUILT_FROM; $FILES files, $BYTES bytes; $PEERS peers at $RATE Mbit/s each; ideal $IDEAL s."
		echo
		echo "| assembly | seconds | efficiency | client peak RSS | sends (start events) |"
		echo "|---|---|---|---|---|"
	} >"$RESULT"
	IFS=, read -r -a MANY_METHODS <<<"${METHOD_LIST//,loop/}"
	for m in "${MANY_METHODS[@]}"; do
		[[ $m == release* ]] || continue
		run_method "$m" || { echo "| $m | FAILED | | | |" >>"$RESULT"; continue; }
		s=${TIMES[$m]% }
		rss=$(awk '{ printf "%.0f MiB", $4 / 1024 }' "$WORK/$m.json.time")
		starts=$(grep -c '"type":"start"' "$WORK/$m.json" || true)
		echo "| $m | $s | $(awk -v i="$IDEAL" -v s="$s" 'BEGIN { printf "%.2f", i / s }') | $rss | $starts |" >>"$RESULT"
	done
	cat "$RESULT"
	exit 0
fi

log "making the tar for curl"
t0=$(now)
tar -C "$WORK" -cf "$WORK/dist.tar" dist
TAR_SECS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
IFS=, read -r -a METHODS <<<"$METHOD_LIST"
for m in "${METHODS[@]}"; do [[ $m == @(release|release-direct|loop|tar) ]] || die "--methods: unknown method '$m'"; done
for ((r = 1; r <= RUNS; r++)); do
	for m in "${METHODS[@]}"; do run_method "$m" || TIMES[$m]+="FAILED "; done
done
RESULT=$OUT/results-release.md
{
	echo "# A release through the lab"
	echo
	echo "$BUILT_FROM; $FILES files (2 x 100 MiB, 200 x 1 MiB, 1 empty), $BYTES bytes;"
	echo "$PEERS peers and the client at $RATE Mbit/s each to the server; ideal (bytes / sum of the caps) $IDEAL s."
	echo "Runs: $RUNS; median reported.  The tar for curl took $TAR_SECS s to make (not counted)."
	echo
	echo "| method | runs (s) | median (s) | efficiency | time / relayup dist/ |"
	echo "|---|---|---|---|---|"
} >"$RESULT"
base=$(tr ' ' '\n' <<<"${TIMES[release]:-}" | grep -E '^[0-9.]+$' | median || echo 0)
for m in "${METHODS[@]}"; do
	label=$m
	case $m in
	release) label="relayup dist/ (append-merge)" ;;
	release-direct) label="relayup dist/ (direct writes)" ;;
	loop) label="loop of relayup send per file" ;;
	tar) label="curl -T dist.tar (client alone)" ;;
	esac
	med=$(tr ' ' '\n' <<<"${TIMES[$m]}" | grep -E '^[0-9.]+$' | median || echo "")
	if [[ -z $med ]]; then
		echo "| $label | ${TIMES[$m]} | FAILED | | |" >>"$RESULT"
		continue
	fi
	eff=$(awk -v i="$IDEAL" -v s="$med" 'BEGIN { printf "%.2f", i / s }')
	ratio=$(awk -v a="$med" -v b="$base" 'BEGIN { if (b > 0) printf "%.2fx", a / b }')
	echo "| $label | ${TIMES[$m]% } | $med | $eff | $ratio |" >>"$RESULT"
done
cat "$RESULT"
