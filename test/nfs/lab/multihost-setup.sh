#!/bin/bash
# multihost-setup.sh -- a real multi-"host" NFS lab on one Linux box, for testing
# cross-host POSIX (fcntl) lock conflicts.
#
# Origin: copied from the team's research lab (shared/lab/nfs-hosts/multihost-setup.sh,
# whose README documents how it was built and what was measured with it; summarised
# in test/nfs/lab/README.md) and adapted for relockd's cross-host suite and CI
# (test/nfs/crosshost.ts, .ci/run). Changes against the original:
#   - 'exec' fails at once when the guest's UML kernel is gone (instead of waiting
#     for its whole timeout);
#   - 'crash' and 'down' verify that every process of the lab is gone: after the
#     SIGKILL of each guest's recorded process group they SIGKILL, by pid, whatever
#     still runs inside the lab's network namespace (`ip netns pids`: a stuck or
#     re-parented UML process, a relay), and exit non-zero if anything survives;
#   - 'down' without a clean shutdown ('down WORKDIR --purge --hard') skips the
#     per-guest poweroff that never answers (~10 s per guest);
#   - 'check' lists the lab's missing Debian packages without installing them;
#     MH_NO_INSTALL=1 makes 'up' fail with that list instead of running apt-get.
#
# Why User-Mode Linux: the sandbox kernel has CONFIG_NETWORK_FILESYSTEMS unset and
# CONFIG_MODULES unset, so neither the kernel NFS server nor the kernel NFS client
# exist on the host kernel (and no module can be loaded). Debian's user-mode-linux
# package ships a complete Linux 6.1 kernel that runs as an ordinary process and
# has nfs/nfsv3/nfsv4/lockd/nfsd as modules. Every "host" here is therefore a
# separate Linux kernel (own lockd, own NFSv4 client id, own network stack):
#   srv   : kernel nfsd (NFSv3 + NLM/lockd + statd, NFSv4.x), ext4 on a ubd disk image
#   c1..cN: kernel NFS clients; each mounts the export twice: NFSv4.2 on /mnt/nfs4
#           and NFSv3 (NLM locking, rpc.statd) on /mnt/nfs3
# The guests use the host's root filesystem read-only (hostfs) so no image has to be
# built; WORKDIR is mounted read-write into every guest at the same path.
# All guests sit on a bridge inside a private network namespace created here, so no
# traffic reaches the host's own network.
#
# Usage:
#   multihost-setup.sh up       WORKDIR [NCLIENTS]   # idempotent; default 2 clients
#   multihost-setup.sh exec     WORKDIR HOST 'shell command'   # HOST = srv|c1|c2|...
#   multihost-setup.sh crash    WORKDIR HOST         # kill -9 the whole UML (power cut)
#   multihost-setup.sh start    WORKDIR HOST         # (re)boot one guest
#   multihost-setup.sh status   WORKDIR
#   multihost-setup.sh down     WORKDIR [--purge] [--hard]  # stop guests, delete netns
#                                 (--hard: SIGKILL the guests, no clean poweroff first)
#   multihost-setup.sh check    WORKDIR              # list missing Debian packages (installs nothing)
#
# Env knobs (read at 'up'):
#   MH_SUBNET   first three octets of the lab subnet (default 10.250.0); only used
#               inside the lab network namespace
#   MH_GRACE    server grace seconds: nfsd v4 lease+grace time and lockd
#               nlm_grace_period (default: kernel defaults, v4 90 s, lockd 50 s)
#   MH_MEM      guest memory (default 256M)
#   MH_NO_INSTALL=1  'up' fails, listing the missing packages, instead of apt-get installing them
#
# Needs (Debian 12): user-mode-linux nfs-kernel-server nfs-common rpcbind iproute2
#                    e2fsprogs kmod python3 (installed by 'up' when missing)
set -euo pipefail

die() { echo "multihost: $*" >&2; exit 1; }

cmd=${1:-}; W=${2:-}
[ -n "$cmd" ] && [ -n "$W" ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
mkdir -p "$W"; W=$(cd "$W" && pwd)

UML=/usr/bin/linux.uml
PY=/usr/bin/python3
STATE=$W/state

# ---------------------------------------------------------------- helpers
load_state() {
  [ -f "$STATE/env" ] || die "no lab in $W (run: $0 up $W)"
  # shellcheck disable=SC1091
  . "$STATE/env"
}

host_ip() { # name -> ip
  case $1 in
    srv) echo "$MH_SUBNET.10" ;;
    c*)  echo "$MH_SUBNET.$((10 + ${1#c}))" ;;
    *) die "unknown host $1" ;;
  esac
}

missing_pkgs() {
  local need=()
  [ -x $UML ] || need+=(user-mode-linux)
  [ -x /usr/sbin/rpc.nfsd ] || need+=(nfs-kernel-server)
  [ -x /usr/sbin/mount.nfs ] || need+=(nfs-common)
  [ -x /usr/sbin/rpcbind ] || need+=(rpcbind)
  command -v ip >/dev/null || need+=(iproute2)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v modprobe >/dev/null || need+=(kmod)
  [ -x $PY ] || need+=(python3)
  echo "${need[*]}"
}

ensure_pkgs() {
  local need; need=$(missing_pkgs)
  [ -n "$need" ] || return 0
  [ "${MH_NO_INSTALL:-0}" != 1 ] || die "missing Debian packages: $need (apt-get install -y --no-install-recommends $need)"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >&2
}

uml_kver() { ls /usr/lib/uml/modules | sort -V | tail -1; }

write_files() {
  mkdir -p "$W/box" "$W/log" "$W/run" "$W/uml" "$W/modroot/lib"
  ln -sfn /usr/lib/uml/modules "$W/modroot/lib/modules"

  { echo "127.0.0.1 localhost"
    echo "$(host_ip srv) srv"
    for i in $(seq 1 "$MH_NCLIENTS"); do echo "$(host_ip c$i) c$i"; done
  } > "$W/hosts"

  # ---- agent: runs shell commands that the host drops into WORKDIR/box/<host>/
  cat > "$W/agent.py" <<'EOF'
import os, sys, time, subprocess, threading
box = sys.argv[1]
os.makedirs(box, exist_ok=True)
def run(base):
    with open(base + '.req') as f:
        cmd = f.read()
    with open(base + '.out.tmp', 'w') as out:
        p = subprocess.run(['/bin/bash', '-c', cmd], stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
    os.rename(base + '.out.tmp', base + '.out')
    with open(base + '.rc.tmp', 'w') as f:
        f.write(str(p.returncode))
    os.rename(base + '.rc.tmp', base + '.rc')
seen = set()
with open(os.path.join(box, 'ready.tmp'), 'w') as f:
    f.write('%d\n' % os.getpid())
os.rename(os.path.join(box, 'ready.tmp'), os.path.join(box, 'ready'))
while True:
    # readdir on hostfs always goes to the host; never look up a name before it exists
    for n in os.listdir(box):
        if n.endswith('.req') and n not in seen:
            seen.add(n)
            threading.Thread(target=run, args=(os.path.join(box, n[:-4]),), daemon=True).start()
    time.sleep(0.02)
EOF

  # ---- guest init (PID 1 inside each UML kernel); parameters come from the kernel
  # command line as environment variables mh_*
  cat > "$W/guest-init.sh" <<'EOF'
#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
exec </dev/null
log() { echo "[guest $mh_name] $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /mnt
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mkdir -p "$mh_work" 2>/dev/null || true
mount -t hostfs -o "$mh_work" none "$mh_work"          # WORKDIR read-write
mount --bind "$mh_work/hosts" /etc/hosts
hostname "$mh_name"
MP="modprobe -d $mh_work/modroot"
if [ -n "${mh_grace:-}" ]; then $MP lockd nlm_grace_period="$mh_grace"; fi
$MP -a sunrpc lockd nfs nfsv3 nfsv4 || log "modprobe client failed"
mkdir -p /run/rpc_pipefs && mount -t rpc_pipefs sunrpc /run/rpc_pipefs
ip link set lo up
ip link set vec0 up
ip addr add "$mh_ip/24" dev vec0
# /var/lib/nfs must be writable: persistent disk on the server, tmpfs on clients
mkdir -p /run/varlibnfs.init && cp -a /var/lib/nfs/. /run/varlibnfs.init/
if [ "$mh_role" = server ]; then
  $MP nfsd || log "modprobe nfsd failed"
  mkdir -p /mnt/disk
  mount -t ext4 /dev/ubda /mnt/disk
  if [ ! -d /mnt/disk/varlibnfs ]; then
    mkdir -p /mnt/disk/varlibnfs /mnt/disk/export
    cp -a /run/varlibnfs.init/. /mnt/disk/varlibnfs/
    chmod 1777 /mnt/disk/export
  fi
  mount --bind /mnt/disk/varlibnfs /var/lib/nfs
else
  # persistent per-client NFS state (statd's sm/ list of servers and its state
  # number) so that after a client crash+reboot sm-notify tells the server, whose
  # lockd then drops the NLM locks of the dead client instance
  mkdir -p "$mh_work/varlib/$mh_name"
  [ -e "$mh_work/varlib/$mh_name/state" ] || cp -a /run/varlibnfs.init/. "$mh_work/varlib/$mh_name/"
  mount --bind "$mh_work/varlib/$mh_name" /var/lib/nfs
  mkdir -p /mnt/nfs4 /mnt/nfs3
fi
mkdir -p /run/rpcbind && chown _rpc /run/rpcbind 2>/dev/null
rpcbind || log "rpcbind failed"
if [ "$mh_role" = server ]; then
  mount -t nfsd nfsd /proc/fs/nfsd
  rpc.statd --no-notify -n "$mh_ip" || log "statd failed"
  # fsid=0: the export is also the NFSv4 pseudo-root (the guest's / is hostfs, which
  # nfsd cannot export, so the default pseudo-root built up from / would fail)
  exportfs -i -o rw,sync,no_root_squash,insecure,no_subtree_check,fsid=0 '*:/mnt/disk/export'
  rpc.mountd || log "mountd failed"
  if [ -n "${mh_grace:-}" ]; then
    echo "$mh_grace" > /proc/fs/nfsd/nfsv4leasetime
    echo "$mh_grace" > /proc/fs/nfsd/nfsv4gracetime
  fi
  rpc.nfsd 8 || log "rpc.nfsd failed"
  # tell NFSv3 clients (their statd) that we rebooted, so lockd reclaims locks
  sm-notify -f -v "$mh_ip" || log "sm-notify failed"
else
  rpc.statd --no-notify || log "statd failed"
  sm-notify -f -v "$mh_ip" || true
fi
log "init done: $(uname -r) ip=$mh_ip"
"$mh_py" "$mh_work/agent.py" "$mh_work/box/$mh_name" >> "$mh_work/log/$mh_name.agent.log" 2>&1 &
while :; do wait; sleep 1; done
EOF
  chmod +x "$W/guest-init.sh"
}

guest_pid() { [ -f "$W/run/$1.pid" ] && cat "$W/run/$1.pid" || true; }
guest_alive() { local p; p=$(guest_pid "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

start_guest() { # name
  local name=$1 role=client disk=() tap ip
  [ "$name" = srv ] && role=server
  guest_alive "$name" && { echo "$name already running (pid $(guest_pid "$name"))"; return 0; }
  tap=mhtap-$name; ip=$(host_ip "$name")
  ip -n "$MH_NS" link show "$tap" >/dev/null 2>&1 || {
    ip -n "$MH_NS" tuntap add dev "$tap" mode tap
    ip -n "$MH_NS" link set "$tap" master mhbr up
  }
  [ "$role" = server ] && disk=("ubd0=$W/srv.img")
  rm -rf "$W/box/$name" "$W/uml/mh-$name"; mkdir -p "$W/box/$name"
  # setsid: the UML kernel and all its helper/guest processes share one process
  # group whose id is the pid we record, so 'crash' and 'down' can kill exactly them
  setsid ip netns exec "$MH_NS" "$UML" umid="mh-$name" uml_dir="$W/uml" mem="$MH_MEM" \
    root=/dev/root rootfstype=hostfs rootflags=/ ro init="$W/guest-init.sh" \
    "${disk[@]}" "vec0:transport=tap,ifname=$tap" con0=fd:0,fd:1 con=null ssl=null \
    mh_role=$role mh_name="$name" mh_ip="$ip" mh_work="$W" mh_py=$PY mh_grace="$MH_GRACE" \
    </dev/null >"$W/log/$name.console.log" 2>&1 &
  echo $! > "$W/run/$name.pid"
  local t=0
  until [ -f "$W/box/$name/ready" ]; do
    sleep 0.2; t=$((t + 1))
    guest_alive "$name" || die "guest $name died; see $W/log/$name.console.log"
    [ $t -lt 600 ] || die "guest $name not ready after 120 s; see $W/log/$name.console.log"
  done
  echo "$name up (pid $(guest_pid "$name"), ip $ip)"
}

gexec() { # name cmd [timeout]
  local name=$1 c=$2 to=${3:-600} box=$W/box/$1 id t=0
  [ -f "$box/ready" ] || die "guest $name not running"
  id=$(date +%s%N)-$$-$RANDOM
  printf '%s\n' "$c" > "$box/$id.tmp"; mv "$box/$id.tmp" "$box/$id.req"
  until [ -f "$box/$id.rc" ]; do
    sleep 0.02; t=$((t + 1))
    [ $t -lt $((to * 50)) ] || { echo "multihost: timeout running on $name: $c" >&2; return 124; }
    # a dead guest never answers: say so now, not after the whole timeout
    if [ $((t % 25)) -eq 0 ] && ! guest_alive "$name"; then
      echo "multihost: guest $name is not running (its UML kernel is gone; see $W/log/$name.console.log)" >&2; return 125
    fi
  done
  cat "$box/$id.out"; local rc; rc=$(cat "$box/$id.rc"); rm -f "$box/$id".*
  return "$rc"
}

mount_clients() {
  local i srvip; srvip=$(host_ip srv)
  for i in $(seq 1 "$MH_NCLIENTS"); do
    gexec "c$i" "
      mountpoint -q /mnt/nfs4 || mount -t nfs -o vers=4.2,hard,timeo=50 $srvip:/ /mnt/nfs4
      mountpoint -q /mnt/nfs3 || mount -t nfs -o vers=3,hard,proto=tcp,timeo=50 $srvip:/mnt/disk/export /mnt/nfs3
      grep -E ' /mnt/nfs[34] ' /proc/mounts" 120
  done
}

stop_guest() { # name [hard]
  local name=$1 p; p=$(guest_pid "$name")
  [ -n "$p" ] || return 0
  if [ "${2:-}" != hard ] && [ -f "$W/box/$name/ready" ] && kill -0 "$p" 2>/dev/null; then
    gexec "$name" 'sync; umount -a -f -t nfs,nfs4 2>/dev/null; sync; echo o > /proc/sysrq-trigger' 10 >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
  kill -9 -- "-$p" 2>/dev/null || true          # whole process group of that UML only
  for _ in $(seq 1 50); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
  phase "$name: process group $p SIGKILLed"
  if kill -0 -- "-$p" 2>/dev/null; then
    echo "multihost: guest $name: processes of group $p survive SIGKILL: $(pgrep -g "$p" | tr '\n' ' ')" >&2
    return 1
  fi
  rm -f "$W/run/$name.pid" "$W/box/$name/ready"
}

# progress of a teardown on stderr, with the seconds since this command started
# (shown by the test runner when a teardown fails or hangs)
phase() { echo "multihost: $cmd +${SECONDS}s: $*" >&2; }

# Everything still running in the lab's network namespace (the guests run there,
# and so do the test runner's relays), SIGKILLed by pid. Only this lab's namespace,
# so only this lab's processes. Fails if any survives.
sweep_netns() {
  local pids left _
  timeout 30 ip netns list | grep -qw "$MH_NS" || return 0
  pids=$(timeout 30 ip netns pids "$MH_NS" 2>/dev/null | tr '\n' ' ')
  [ -z "${pids// }" ] && return 0
  echo "multihost: SIGKILL of processes still in netns $MH_NS: $pids" >&2
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  for _ in $(seq 1 50); do
    left=$(timeout 30 ip netns pids "$MH_NS" 2>/dev/null | tr '\n' ' ')
    [ -z "${left// }" ] && return 0
    sleep 0.1
  done
  echo "multihost: still alive in netns $MH_NS after SIGKILL: $left" >&2
  return 1
}

# ---------------------------------------------------------------- commands
case $cmd in
up)
  ensure_pkgs
  mkdir -p "$STATE"
  if [ ! -f "$STATE/env" ]; then
    h=$(printf '%s' "$W" | md5sum | cut -c1-8)
    cat > "$STATE/env" <<EOF
MH_NS=mhlab-$h
MH_NCLIENTS=${3:-2}
MH_SUBNET=${MH_SUBNET:-10.250.0}
MH_GRACE=${MH_GRACE:-}
MH_MEM=${MH_MEM:-256M}
EOF
  fi
  load_state
  if [ -n "${3:-}" ] && [ "$3" != "$MH_NCLIENTS" ]; then
    sed -i "s/^MH_NCLIENTS=.*/MH_NCLIENTS=$3/" "$STATE/env"; load_state
  fi
  write_files
  [ -f "$W/srv.img" ] || { truncate -s 512M "$W/srv.img"; mkfs.ext4 -q -F "$W/srv.img"; }
  ip netns list | grep -qw "$MH_NS" || ip netns add "$MH_NS"
  ip -n "$MH_NS" link set lo up
  ip -n "$MH_NS" link show mhbr >/dev/null 2>&1 || {
    ip -n "$MH_NS" link add mhbr type bridge stp_state 0 forward_delay 0
    ip -n "$MH_NS" addr add "$MH_SUBNET.1/24" dev mhbr
    ip -n "$MH_NS" link set mhbr up
  }
  start_guest srv
  for i in $(seq 1 "$MH_NCLIENTS"); do start_guest "c$i"; done
  mount_clients
  echo "lab up: netns $MH_NS, server $(host_ip srv):/mnt/disk/export (v3) = $(host_ip srv):/ (v4), clients mount it on /mnt/nfs4 (v4.2) and /mnt/nfs3 (v3)"
  ;;
exec)
  load_state; [ $# -ge 4 ] || die "usage: $0 exec WORKDIR HOST CMD"
  gexec "$3" "$4" "${5:-600}"
  ;;
start)
  load_state; start_guest "$3"
  [ "$3" = srv ] || mount_clients
  ;;
crash)
  load_state; p=$(guest_pid "$3"); stop_guest "$3" hard || die "crash $3 failed"; echo "$3 (pgid ${p:-none}) killed with SIGKILL"
  ;;
check)
  need=$(missing_pkgs)
  if [ -n "$need" ]; then echo "missing Debian packages: $need"; exit 1; fi
  echo "all packages present"
  ;;
status)
  load_state
  echo "netns $MH_NS: $(ip netns list | grep -cw "$MH_NS") ; clients: $MH_NCLIENTS"
  for n in srv $(seq -f 'c%g' 1 "$MH_NCLIENTS"); do
    if guest_alive "$n"; then echo "$n: running pid $(guest_pid "$n") ip $(host_ip "$n")"; else echo "$n: stopped"; fi
  done
  ;;
down)
  purge=0; how=
  for a in "${@:3}"; do
    case $a in --purge) purge=1 ;; --hard) how=hard ;; *) die "down: unknown option $a" ;; esac
  done
  ok=1
  phase "start${how:+ ($how)}"
  if [ -f "$STATE/env" ]; then
    load_state
    for i in $(seq 1 "$MH_NCLIENTS"); do stop_guest "c$i" $how || ok=0; done
    stop_guest srv $how || ok=0
    sweep_netns || ok=0
    phase "netns $MH_NS swept"
    if timeout 30 ip netns list | grep -qw "$MH_NS"; then timeout 60 ip netns del "$MH_NS" || ok=0; fi
    if timeout 30 ip netns list | grep -qw "$MH_NS"; then echo "multihost: netns $MH_NS still exists" >&2; ok=0; fi
    phase "netns $MH_NS deleted"
  fi
  [ $ok = 1 ] || die "down: the lab in $W did not stop completely (files kept for inspection)"
  if [ $purge = 1 ]; then rm -rf "$W"; phase "purged"; echo "purged $W"; fi
  echo "lab down"
  ;;
*) die "unknown command $cmd" ;;
esac
