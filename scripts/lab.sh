#!/usr/bin/env bash
# lab.sh - build a simulated office LAN for testing relayup.
#
# One server namespace (sshd + vsftpd), one client workstation and N peer
# workstations, all plugged into a bridge with no uplink.  Every
# workstation's traffic *to the server* is shaped with htb to its own rate;
# traffic between workstations is not capped.  Run `lab.sh --help`.
set -Eeuo pipefail
umask 022
# Name the command that made `set -e` abort.  Skipped for x=$(...): whatever
# failed inside the substitution has already reported (die or this trap).
on_err() {
	# shellcheck disable=SC2016 # a literal $( is meant
	[[ $2 == *'$('* ]] || printf '%s: error: command failed (line %s): %s\n' "${0##*/}" "$1" "$2" >&2
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

readonly PROG=${0##*/}
readonly NS_PREFIX=rlab
readonly LAN_NS=rlab-lan          # namespace holding the bridge
readonly BRIDGE=rlab-br0
readonly NET=198.18.0
readonly SERVER_IP=198.18.0.1
readonly SERVER_USER=rlab-server
readonly RELEASES=/home/rlab-server/releases
readonly DEFAULT_DIR=/tmp/relayup-lab
readonly STATE_FILE=/run/relayup-lab.dir   # remembers DIR for down/status
readonly MARKER=.relayup-lab               # DIR is only ever rm -rf'd if this exists
readonly PASV_MIN=40000
readonly PASV_MAX=40199
readonly LAN_RATE=10gbit                   # "uncapped" default htb class
readonly MAX_PEERS=200

usage() {
	cat <<EOF
Usage: $PROG COMMAND [OPTIONS]

Simulated office for relayup: a server, a client workstation and N peer
workstations in network namespaces on an isolated bridge (198.18.0.0/24).
Each workstation's traffic to the server is capped (htb); the LAN between
workstations is not.  Must run as root.

Commands:
  up --peers N --rate MBIT[,MBIT...] [--dir DIR] [--relayup PATH]
        Build the lab (tears down a previous one first).
        --peers N      number of peer workstations (0-$MAX_PEERS)
        --rate R       upload cap to the server in Mbit/s: one value for every
                       host, or N+1 comma-separated values in the order
                       client,p1,p2,...
        --dir DIR      state directory (default $DEFAULT_DIR); must be
                       absent, empty or a previous lab dir
        --relayup PATH copy this binary to DIR/bin/relayup for the peers
  down [--dir DIR]
        Kill every lab process, delete namespaces, bridge and DIR.
  status [--dir DIR]
        Show what is up (hosts, daemons, shaping counters).
  exec HOST CMD [ARG...]
        Run CMD in HOST's namespace. HOST: server|client|p1..pN|lan

Hosts and namespaces:
  server  rlab-srv     $SERVER_IP   sshd :22 (user $SERVER_USER, password + client key)
                                    vsftpd :21 (passive ports $PASV_MIN-$PASV_MAX)
  client  rlab-client  $NET.10
  pI      rlab-pI      $NET.(10+I)  sshd :22 (user rlab-peerI, client key)
  (bridge $BRIDGE lives in namespace $LAN_NS)

Files written to DIR:
  id_ed25519[.pub]   client key (accepted by every sshd)
  known_hosts        host keys of server and peers
  ssh_config         ready-made client config: ssh -F DIR/ssh_config HOST
  server.pass        FTP/SSH password of $SERVER_USER (0600, new on every up)
  peers.toml         relayup config, FTP upload
  peers-sftp.toml    relayup config, SFTP upload
  lab.env            shell variables (LAB_DIR, LAB_PEERS, LAB_RATES, LAB_SERVER, ...)
  bin/relayup        copy of --relayup PATH
  hosts/<host>/      per-host daemon configs, host keys, pid files and logs

Examples:
  $PROG up --peers 3 --rate 80
  $PROG up --peers 3 --rate 80,80,20,40 --relayup target/release/relayup
  $PROG exec client ssh -F $DEFAULT_DIR/ssh_config rlab-peer1@$NET.11 id
  $PROG down
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

need_root() {
	[[ $(id -u) -eq 0 ]] || die "must be run as root (network namespaces, tc, useradd)"
}

need_tools() {
	local missing=() t
	for t in ip tc ss ssh-keygen useradd usermod chpasswd setsid; do
		command -v "$t" >/dev/null 2>&1 || missing+=("$t")
	done
	[[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null 2>&1 || missing+=(sshd)
	[[ -x /usr/sbin/vsftpd ]] || command -v vsftpd >/dev/null 2>&1 || missing+=(vsftpd)
	if ((${#missing[@]})); then
		die "missing: ${missing[*]} -- apt-get install openssh-server vsftpd iproute2"
	fi
}

# Absolute path of a daemon binary (sshd refuses to re-exec from a relative path).
bin_path() {
	local p
	p=$(PATH=/usr/sbin:/sbin:$PATH command -v "$1") || die "$1 not found -- apt-get install openssh-server vsftpd iproute2"
	[[ $p == /* ]] || p=$(realpath "$p")
	printf '%s\n' "$p"
}

# --- host naming ------------------------------------------------------------

# host -> namespace
ns_of() {
	case $1 in
	server | srv) echo "$NS_PREFIX-srv" ;;
	client) echo "$NS_PREFIX-client" ;;
	lan) echo "$LAN_NS" ;;
	p[1-9] | p[1-9][0-9] | p[1-9][0-9][0-9]) echo "$NS_PREFIX-$1" ;;
	*) return 1 ;;
	esac
}

# host -> IPv4 address
ip_of() {
	case $1 in
	server | srv) echo "$SERVER_IP" ;;
	client) echo "$NET.10" ;;
	p*) echo "$NET.$((10 + ${1#p}))" ;;
	*) return 1 ;;
	esac
}

# Namespaces that belong to the lab (present right now).
lab_namespaces() {
	ip netns list 2>/dev/null | awk '{print $1}' |
		grep -E "^($NS_PREFIX-(srv|client|lan|p[0-9]+))$" || true
}

# --- DIR handling -----------------------------------------------------------

abs_dir() {
	local d=$1
	[[ -n $d ]] || die "empty --dir"
	d=$(realpath -m -- "$d")
	case $d in
	/ | /tmp | /home | /root | /usr | /etc | /var | /run | /bin | /sbin | /lib | /boot | /dev | /proc | /sys)
		die "refusing to use $d as lab dir"
		;;
	esac
	printf '%s\n' "$d"
}

# Remember the lab dir so `down`/`status` without --dir find it.
state_dir() {
	if [[ -n ${1:-} ]]; then
		abs_dir "$1"
	elif [[ -s $STATE_FILE ]]; then
		head -n1 "$STATE_FILE"
	else
		echo "$DEFAULT_DIR"
	fi
}

# --- down -------------------------------------------------------------------

# Running (not gone, not a zombie waiting for init to reap it).
pid_alive() {
	local st
	[[ ${1:-} =~ ^[0-9]+$ ]] || return 1
	st=$(awk '/^State:/ { print $2; exit }' "/proc/$1/status" 2>/dev/null) || return 1
	[[ -n $st && $st != [ZX] ]]
}

kill_pidfile() {
	local f=$1 pid comm
	[[ -f $f ]] || return 0
	pid=$(head -n1 "$f" 2>/dev/null || true)
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	pid_alive "$pid" || return 0
	comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
	case $comm in
	sshd | vsftpd) kill -TERM "$pid" 2>/dev/null || true ;;
	*) log "not killing pid $pid from $f (it is '$comm', not sshd/vsftpd)" ;;
	esac
}

# Kill every process living in a lab namespace (TERM, then KILL).
kill_ns_procs() {
	local ns pids=() p i
	for ns in "$@"; do
		while read -r p; do [[ -n $p ]] && pids+=("$p"); done < <(ip netns pids "$ns" 2>/dev/null || true)
	done
	((${#pids[@]})) || return 0
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for ((i = 0; i < 30; i++)); do
		local left=()
		for p in "${pids[@]}"; do pid_alive "$p" && left+=("$p"); done
		((${#left[@]})) || return 0
		sleep 0.1
	done
	kill -KILL "${left[@]}" 2>/dev/null || true
}

# do_down DIR [quiet] [keepdir]
do_down() {
	local dir=$1 quiet=${2:-} keep=${3:-} f nss=()
	if [[ -d $dir && -e $dir/$MARKER ]]; then
		for f in "$dir"/hosts/*/sshd.pid "$dir"/hosts/*/vsftpd.pid; do
			[[ -e $f ]] && kill_pidfile "$f"
		done
	fi
	mapfile -t nss < <(lab_namespaces)
	if ((${#nss[@]})); then
		kill_ns_procs "${nss[@]}"
		for f in "${nss[@]}"; do ip netns del "$f" 2>/dev/null || log "could not delete namespace $f"; done
	fi
	# a bridge left in the root namespace by hand/older versions
	if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" || true; fi
	local removed=""
	if [[ -d $dir && -z $keep ]]; then
		if [[ -e $dir/$MARKER ]]; then
			rm -rf -- "$dir"
			removed=", deleted $dir"
		elif [[ -z $quiet ]]; then
			log "not deleting $dir: it has no $MARKER marker (not a lab dir)"
		fi
	fi
	if [[ -z $keep && -f $STATE_FILE && $(head -n1 "$STATE_FILE" 2>/dev/null) == "$dir" ]]; then
		rm -f "$STATE_FILE"
	fi
	[[ -n $quiet ]] || log "lab is down (deleted ${#nss[@]} namespaces$removed)"
}

cmd_down() {
	local dir=""
	while (($#)); do
		case $1 in
		--dir) dir=${2:?--dir needs a value}; shift 2 ;;
		--dir=*) dir=${1#*=}; shift ;;
		-h | --help) usage; exit 0 ;;
		*) die "down: unknown argument '$1'" ;;
		esac
	done
	need_root
	dir=$(state_dir "$dir")
	do_down "$dir"
}

# --- up ---------------------------------------------------------------------

up_failed() {
	[[ ${UP_DONE:-1} == 1 ]] && return 0
	log "up failed; stopping the half-built lab (logs kept in $DIR/hosts, '$PROG down' removes them)"
	do_down "$DIR" quiet keepdir
}

gen_password() {
	local pw
	pw=$(head -c 48 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | cut -c1-24)
	[[ ${#pw} -ge 16 ]] || die "could not generate a password"
	printf '%s' "$pw"
}

ensure_user() {
	local user=$1
	if ! id -u "$user" >/dev/null 2>&1; then
		useradd -m -s /bin/bash "$user" || die "useradd $user failed"
	fi
	local home
	home=$(getent passwd "$user" | cut -d: -f6)
	if [[ ! -d $home ]]; then
		mkdir -p "$home"
		chown "$user:" "$home"
		chmod 0755 "$home"
	fi
}

# With UsePAM no, sshd refuses even key logins for accounts whose password
# starts with '!' (useradd's default).  '*' = no password, but not locked.
unlock_for_keys() {
	local user=$1 hash
	hash=$(getent shadow "$user" | cut -d: -f2)
	if [[ -z $hash || $hash == '!'* ]]; then
		usermod -p '*' "$user"
	fi
}

# Wait until something listens on TCP port $2 in namespace $1.
wait_listen() {
	local ns=$1 port=$2 i
	for ((i = 0; i < 50; i++)); do
		if [[ -n $(ip netns exec "$ns" ss -Hltn "sport = :$port" 2>/dev/null) ]]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# The sshd of one host.  $1 host name, $2 address, $3 allowed user,
# $4 "yes"/"no" password authentication
start_sshd() {
	local host=$1 addr=$2 user=$3 pwauth=$4 ns hd sshd
	ns=$(ns_of "$host")
	hd=$DIR/hosts/$host
	sshd=$(bin_path sshd)
	cat >"$hd/sshd_config" <<EOF
# generated by $PROG for $host
Port 22
ListenAddress $addr
AddressFamily inet
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
UsePAM no
StrictModes no
PubkeyAuthentication yes
AuthorizedKeysFile $DIR/authorized_keys
PasswordAuthentication $pwauth
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin no
AllowUsers $user
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
AllowAgentForwarding yes
MaxStartups 100:30:200
MaxSessions 64
LoginGraceTime 30
LogLevel INFO
Subsystem sftp internal-sftp
EOF
	"$sshd" -t -f "$hd/sshd_config" || die "sshd config for $host is invalid ($hd/sshd_config)"
	ip netns exec "$ns" "$sshd" -f "$hd/sshd_config" -E "$hd/sshd.log" ||
		die "sshd for $host failed to start, see $hd/sshd.log"
	wait_listen "$ns" 22 || die "sshd for $host is not listening on $addr:22, see $hd/sshd.log"
}

start_vsftpd() {
	local ns hd vsftpd pid
	ns=$(ns_of server)
	hd=$DIR/hosts/server
	vsftpd=$(bin_path vsftpd)
	mkdir -p /var/run/vsftpd/empty
	printf '%s\n' "$SERVER_USER" >"$hd/vsftpd.users"
	# local_root=/ : the login directory is "/", so a URL path such as
	# ftp://host/home/rlab-server/releases/x means the same thing whether a
	# client treats it as relative (curl) or absolute.
	cat >"$hd/vsftpd.conf" <<EOF
# generated by $PROG
listen=YES
listen_ipv6=NO
listen_address=$SERVER_IP
listen_port=21
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
local_root=/
chroot_local_user=NO
# relayup's direct writes put every host's parts into one file at once; vsftpd's
# default (YES) would make each upload of that file wait for the others.
lock_upload_files=NO
userlist_enable=YES
userlist_deny=NO
userlist_file=$hd/vsftpd.users
pam_service_name=vsftpd
pasv_enable=YES
pasv_address=$SERVER_IP
pasv_addr_resolve=NO
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
port_enable=YES
connect_from_port_20=NO
max_clients=0
max_per_ip=0
idle_session_timeout=3600
data_connection_timeout=600
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
ssl_enable=NO
use_localtime=YES
xferlog_enable=YES
xferlog_std_format=NO
dual_log_enable=NO
vsftpd_log_file=$hd/vsftpd.log
EOF
	chown root:root "$hd/vsftpd.conf" "$hd/vsftpd.users"
	chmod 0644 "$hd/vsftpd.conf" "$hd/vsftpd.users"
	# `ip netns exec` and `setsid` both exec, so $! is vsftpd's own pid.
	ip netns exec "$ns" setsid "$vsftpd" "$hd/vsftpd.conf" </dev/null >>"$hd/vsftpd.out" 2>&1 &
	pid=$!
	echo "$pid" >"$hd/vsftpd.pid"
	if ! wait_listen "$ns" 21; then
		cat "$hd/vsftpd.out" >&2 || true
		die "vsftpd is not listening on $SERVER_IP:21, see $hd/vsftpd.out"
	fi
	[[ $(cat "/proc/$pid/comm" 2>/dev/null) == vsftpd ]] || die "vsftpd pid $pid vanished, see $hd/vsftpd.out"
}

# htb on a workstation's uplink: traffic to the server at $2 Mbit/s, the rest
# (LAN) effectively uncapped.
shape() {
	local ns=$1 rate=$2 burst
	# burst ~ 4 ms at the rate, at least 200 kB (a few 64 KiB GSO packets).
	# Measured on veth: 64 MiB over FTP at 80 Mbit/s gives 75.9 Mbit/s of
	# payload (1448 of every 1514 bytes htb counts => 76.5 max); htb's
	# default 1600 b burst gave 75.7, so this is a safety margin, not a fix.
	# No leaf qdisc is added: htb's default pfifo is used (this kernel has
	# no fq_codel/sfq modules).
	burst=$(awk -v r="$rate" 'BEGIN { b = r * 1e6 / 8 * 0.004; if (b < 200000) b = 200000; printf "%d", b }')
	ip netns exec "$ns" tc qdisc replace dev eth0 root handle 1: htb default 20
	ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:10 htb \
		rate "${rate}mbit" ceil "${rate}mbit" burst "$burst" cburst "$burst" quantum 65536
	ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:20 htb \
		rate "$LAN_RATE" ceil "$LAN_RATE" burst 4mb cburst 4mb quantum 200000
	ip netns exec "$ns" tc filter add dev eth0 parent 1: protocol ip prio 1 u32 \
		match ip dst "$SERVER_IP/32" flowid 1:10
}

# Create namespace + veth into the bridge for one host.
add_host() {
	local host=$1 ns addr
	ns=$(ns_of "$host")
	addr=$(ip_of "$host")
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
	ip link add eth0 netns "$ns" mtu 1500 type veth peer name "v-$host" netns "$LAN_NS" mtu 1500
	ip -n "$LAN_NS" link set "v-$host" master "$BRIDGE" up
	ip -n "$ns" addr add "$addr/24" dev eth0
	ip -n "$ns" link set eth0 up
}

# NAME='value' (single-quoted, safe to source)
env_line() {
	local q="'\\''"
	printf "%s='%s'\n" "$1" "${2//\'/$q}"
}

toml_file() {
	local scheme=$1 i
	cat <<EOF
[server]
url = "$scheme://$SERVER_IP$RELEASES"
user = "$SERVER_USER"
password_file = "$DIR/server.pass"

[merge]
host = "$SERVER_IP"
user = "$SERVER_USER"
dir = "$RELEASES"
identity = "$DIR/id_ed25519"

[ssh]
identity = "$DIR/id_ed25519"
known_hosts = "$DIR/known_hosts"
EOF
	for ((i = 1; i <= PEERS; i++)); do
		cat <<EOF

[[peer]]
name = "p$i"
host = "$(ip_of "p$i")"
user = "rlab-peer$i"
relayup = "$DIR/bin/relayup"
EOF
	done
}

cmd_up() {
	local peers="" rate="" dir="" relayup=""
	while (($#)); do
		case $1 in
		--peers) peers=${2:?--peers needs a value}; shift 2 ;;
		--peers=*) peers=${1#*=}; shift ;;
		--rate) rate=${2:?--rate needs a value}; shift 2 ;;
		--rate=*) rate=${1#*=}; shift ;;
		--dir) dir=${2:?--dir needs a value}; shift 2 ;;
		--dir=*) dir=${1#*=}; shift ;;
		--relayup) relayup=${2:?--relayup needs a value}; shift 2 ;;
		--relayup=*) relayup=${1#*=}; shift ;;
		-h | --help) usage; exit 0 ;;
		*) die "up: unknown argument '$1' (see --help)" ;;
		esac
	done
	[[ -n $peers ]] || die "up: --peers N is required"
	[[ -n $rate ]] || die "up: --rate MBIT[,MBIT...] is required"
	if [[ ! $peers =~ ^[0-9]+$ ]] || ((10#$peers > MAX_PEERS)); then
		die "--peers must be an integer 0-$MAX_PEERS, got '$peers'"
	fi
	PEERS=$((10#$peers))

	local -a given
	IFS=, read -r -a given <<<"$rate"
	local r
	for r in "${given[@]}"; do
		if [[ ! $r =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v r="$r" 'BEGIN { exit !(r > 0) }'; then
			die "--rate: '$r' is not a positive number of Mbit/s"
		fi
	done
	RATES=()
	if ((${#given[@]} == 1)); then
		for ((r = 0; r <= PEERS; r++)); do RATES+=("${given[0]}"); done
	elif ((${#given[@]} == PEERS + 1)); then
		RATES=("${given[@]}")
	else
		die "--rate has ${#given[@]} values; give 1 or $((PEERS + 1)) (client,p1..p$PEERS)"
	fi

	if [[ -n $relayup ]]; then
		[[ -f $relayup && -x $relayup ]] || die "--relayup: '$relayup' is not an executable file"
		relayup=$(realpath -- "$relayup")
	fi

	need_root
	need_tools
	bin_path sshd >/dev/null
	bin_path vsftpd >/dev/null

	DIR=$(abs_dir "${dir:-$DEFAULT_DIR}")
	if [[ -e $DIR && ! -d $DIR ]]; then die "$DIR exists and is not a directory"; fi
	if [[ -d $DIR && ! -e $DIR/$MARKER && -n $(ls -A "$DIR") ]]; then
		die "$DIR exists, is not empty and is not a lab dir; choose another --dir"
	fi

	# Tear down whatever was there before (previous DIR and this one).
	local old
	old=$(state_dir "")
	do_down "$old" quiet
	[[ $old == "$DIR" ]] || do_down "$DIR" quiet

	log "building lab in $DIR: server, client, $PEERS peers; caps (Mbit/s) ${RATES[*]}"
	mkdir -p "$DIR"
	chmod 0755 "$DIR"
	: >"$DIR/$MARKER"
	printf '%s\n' "$DIR" >"$STATE_FILE"
	mkdir -p "$DIR/bin" "$DIR/hosts"
	chmod 0755 "$DIR/bin" "$DIR/hosts"

	# If anything below fails, do not leave a half-built lab running
	# (the dir is kept so its logs can be read; `down` removes it).
	UP_DONE=0
	trap 'up_failed' EXIT

	mkdir -p /run/sshd /var/run/vsftpd/empty
	chmod 0755 /run/sshd /var/run/vsftpd/empty

	# --- accounts
	ensure_user "$SERVER_USER"
	local pw
	pw=$(gen_password)
	printf '%s:%s\n' "$SERVER_USER" "$pw" | chpasswd
	(umask 077 && printf '%s' "$pw" >"$DIR/server.pass")
	chmod 0600 "$DIR/server.pass"
	mkdir -p "$RELEASES"
	chown "$SERVER_USER:" "$RELEASES"
	chmod 0755 "$RELEASES"
	local i
	for ((i = 1; i <= PEERS; i++)); do
		ensure_user "rlab-peer$i"
		unlock_for_keys "rlab-peer$i"
	done

	# --- keys
	ssh-keygen -q -t ed25519 -N '' -C "relayup-lab-client" -f "$DIR/id_ed25519"
	chmod 0600 "$DIR/id_ed25519"
	chmod 0644 "$DIR/id_ed25519.pub"
	install -m 0644 "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
	local hosts=(server) h
	for ((i = 1; i <= PEERS; i++)); do hosts+=("p$i"); done
	: >"$DIR/known_hosts"
	for h in "${hosts[@]}"; do
		mkdir -p "$DIR/hosts/$h"
		chmod 0755 "$DIR/hosts/$h"
		ssh-keygen -q -t ed25519 -N '' -C "relayup-lab-$h" -f "$DIR/hosts/$h/ssh_host_ed25519_key"
		printf '%s %s\n' "$(ip_of "$h")" "$(cut -d' ' -f1,2 "$DIR/hosts/$h/ssh_host_ed25519_key.pub")" >>"$DIR/known_hosts"
	done
	chmod 0644 "$DIR/known_hosts"
	cat >"$DIR/ssh_config" <<EOF
# ssh -F $DIR/ssh_config USER@198.18.0.X
Host *
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
EOF

	if [[ -n $relayup ]]; then
		install -m 0755 "$relayup" "$DIR/bin/relayup"
	fi

	# --- network
	ip netns add "$LAN_NS"
	ip -n "$LAN_NS" link set lo up
	ip netns exec "$LAN_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
	ip -n "$LAN_NS" link add "$BRIDGE" type bridge stp_state 0 forward_delay 0
	ip -n "$LAN_NS" link set "$BRIDGE" up
	ip netns exec "$LAN_NS" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
		net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true

	add_host server
	add_host client
	shape "$(ns_of client)" "${RATES[0]}"
	for ((i = 1; i <= PEERS; i++)); do
		add_host "p$i"
		shape "$(ns_of "p$i")" "${RATES[i]}"
	done

	# --- daemons
	start_sshd server "$SERVER_IP" "$SERVER_USER" yes
	start_vsftpd
	for ((i = 1; i <= PEERS; i++)); do
		start_sshd "p$i" "$(ip_of "p$i")" "rlab-peer$i" no
	done

	# --- configs for relayup and other scripts
	toml_file ftp >"$DIR/peers.toml"
	toml_file sftp >"$DIR/peers-sftp.toml"
	# Direct writes: FTP only (no [merge]: parts read back to verify), and with the
	# shell login kept (its md5sum verifies each part on the server).
	toml_file ftp | sed -e '/^\[merge\]$/,/^$/d' -e 's/^\[server\]$/[server]\nassembly = "direct"/' >"$DIR/peers-direct.toml"
	toml_file ftp | sed -e 's/^\[server\]$/[server]\nassembly = "direct"/' >"$DIR/peers-direct-shell.toml"
	local hostlist="client" ratelist
	for ((i = 1; i <= PEERS; i++)); do hostlist+=" p$i"; done
	ratelist=$(IFS=,; echo "${RATES[*]}")
	{
		echo "# generated by $PROG up; source me"
		env_line LAB_DIR "$DIR"
		env_line LAB_PEERS "$PEERS"
		env_line LAB_RATES "$ratelist"
		env_line LAB_HOSTS "$hostlist"
		env_line LAB_SERVER "$SERVER_IP"
		env_line LAB_CLIENT "$(ip_of client)"
		env_line LAB_SERVER_USER "$SERVER_USER"
		env_line LAB_RELEASES "$RELEASES"
		env_line LAB_PASS_FILE "$DIR/server.pass"
		env_line LAB_KEY "$DIR/id_ed25519"
		env_line LAB_KNOWN_HOSTS "$DIR/known_hosts"
		env_line LAB_SSH_CONFIG "$DIR/ssh_config"
		env_line LAB_CONFIG "$DIR/peers.toml"
		env_line LAB_SFTP_CONFIG "$DIR/peers-sftp.toml"
		env_line LAB_RELAYUP "${relayup:+$DIR/bin/relayup}"
	} >"$DIR/lab.env"
	chmod 0644 "$DIR/peers.toml" "$DIR/peers-sftp.toml" "$DIR/peers-direct.toml" "$DIR/peers-direct-shell.toml" "$DIR/lab.env" "$DIR/ssh_config"

	UP_DONE=1
	trap - EXIT
	log "lab is up; config $DIR/peers.toml, env $DIR/lab.env"
	log "try: $PROG exec client ssh -F $DIR/ssh_config $SERVER_USER@$SERVER_IP id"
}

# --- status -----------------------------------------------------------------

daemon_state() {
	local f=$1 pid
	if [[ -f $f ]]; then
		pid=$(head -n1 "$f")
		if pid_alive "$pid"; then echo "pid $pid"; else echo "DEAD (pid $pid)"; fi
	else
		echo "-"
	fi
}

cmd_status() {
	local dir=""
	while (($#)); do
		case $1 in
		--dir) dir=${2:?--dir needs a value}; shift 2 ;;
		--dir=*) dir=${1#*=}; shift ;;
		-h | --help) usage; exit 0 ;;
		*) die "status: unknown argument '$1'" ;;
		esac
	done
	need_root
	dir=$(state_dir "$dir")
	local nss=()
	mapfile -t nss < <(lab_namespaces)
	if ((${#nss[@]} == 0)); then
		echo "relayup lab: down (no $NS_PREFIX-* namespaces)"
		[[ -d $dir ]] && echo "  (stale dir $dir exists)"
		return 0
	fi
	local LAB_PEERS="?" LAB_RATES="?"
	if [[ -r $dir/lab.env ]]; then
		# shellcheck disable=SC1091
		source "$dir/lab.env"
	fi
	echo "relayup lab: up   dir $dir   peers $LAB_PEERS   caps to server (Mbit/s, client,p1..) $LAB_RATES"
	if ip netns exec "$LAN_NS" ip link show "$BRIDGE" >/dev/null 2>&1; then
		echo "bridge: $BRIDGE in namespace $LAN_NS ($(ip -n "$LAN_NS" -o link show master "$BRIDGE" | wc -l) ports)"
	else
		echo "bridge: MISSING"
	fi
	printf '%-7s %-12s %-13s %-9s %-14s %-14s %s\n' HOST NAMESPACE ADDRESS CAP SSHD VSFTPD "SENT-TO-SERVER"
	local ns host addr cap sshd vs sent ordered
	# server, client, p1, p2, ... p10
	ordered=$(printf '%s\n' "${nss[@]}" | grep -vx -- "$LAN_NS" |
		sed -e "s/^$NS_PREFIX-srv\$/0 &/" -e "s/^$NS_PREFIX-client\$/1 &/" -e "s/^$NS_PREFIX-p/2 &/" |
		sort -V | cut -d' ' -f2)
	for ns in $ordered; do
		host=${ns#"$NS_PREFIX"-}
		[[ $host == srv ]] && host=server
		addr=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{sub("/.*", "", $4); print $4}')
		cap=$(ip netns exec "$ns" tc class show dev eth0 classid 1:10 2>/dev/null |
			sed -n 's/.* rate \([^ ]*\).*/\1/p')
		sent=$(ip netns exec "$ns" tc -s class show dev eth0 classid 1:10 2>/dev/null |
			awk '/Sent/ {printf "%.1f MB", $2 / 1e6; exit}')
		sshd=$(daemon_state "$dir/hosts/$host/sshd.pid")
		vs=-
		[[ $host == server ]] && vs=$(daemon_state "$dir/hosts/server/vsftpd.pid")
		printf '%-7s %-12s %-13s %-9s %-14s %-14s %s\n' "$host" "$ns" "${addr:--}" "${cap:--}" "$sshd" "$vs" "${sent:--}"
	done
}

# --- exec -------------------------------------------------------------------

cmd_exec() {
	(($# >= 2)) || die "usage: $PROG exec HOST CMD [ARG...]"
	local host=$1 ns
	shift
	ns=$(ns_of "$host") || die "unknown host '$host' (server|client|p1..pN|lan)"
	need_root
	ip netns list | awk '{print $1}' | grep -qx -- "$ns" || die "namespace $ns does not exist (is the lab up?)"
	exec ip netns exec "$ns" "$@"
}

main() {
	(($#)) || { usage >&2; exit 2; }
	local cmd=$1
	shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	status) cmd_status "$@" ;;
	exec) cmd_exec "$@" ;;
	-h | --help | help) usage ;;
	*) die "unknown command '$cmd' (see --help)" ;;
	esac
}

main "$@"
