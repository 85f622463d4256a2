#!/usr/bin/env bash
# Benchmark berth side by side with Debian's containerd (issue 6, DESIGN.md "Targets").
#
#   sudo ./hack/bench.sh [--count N] [--pods P] [--concurrency C] [--max-pods M]
#                        [--warmup W] [--json FILE] [--no-containerd] [--only FIG,...]
#                        [--keep] [-- BENCH-ARGS...]
#
# Run as root from the repository. It
#   1. installs what it needs from Debian (docker-registry, containernetworking-plugins,
#      iptables, python3; with containerd, the `containerd` and `runc` packages, whose
#      services are never enabled or started: a policy-rc.d refuses them during the install);
#   2. builds the release binaries (cargo build --release --locked --bins);
#   3. starts a docker-registry on a free 127.0.0.1 port in a temporary directory and pushes
#      berth's test images (berth-testimg; berth-test/pause is containerd's sandbox image);
#   4. writes a CNI conflist there: a bridge of its own (name and a 10.198.X.0/20 subnet
#      not in use: 4094 addresses, room for both runtimes' --max-pods at once), host-local
#      IPAM with its data in the temporary directory, portmap; checks the host limits that
#      hundreds of pods reach and raises what is short (the "Host limits" comment in this
#      script says which; restored on exit);
#   5. starts target/release/berthd with root, state and socket in the temporary directory,
#      docker.io mirrored to the registry;
#   6. with containerd: starts `containerd --config` with its own root, state, sockets and
#      runc root there, the CRI plugin on the same CNI config, docker.io mirrored to the
#      registry through a hosts.toml directory;
#   7. runs target/release/berth-bench [--vs containerd] and prints its table; the JSON
#      goes to --json (default target/bench/bench-DATE.json);
#   8. cleans up on exit, failure or Ctrl-C: pods left behind, daemons and their shims,
#      the registry, mounts under the temporary directory, network namespaces it made, the
#      bridge, the iptables rules of its subnet and network, the sysctls it raised, the
#      temporary directory.
#
# Defaults: --count 20 --pods 100 --concurrency 4 --max-pods 500 --warmup 1, containerd
# on: every figure (memory with 100 pods, full-pod over 100 pods sequential and 4 at a
# time, density up to 500 pods on each runtime, one after the other). Arguments after `--`
# go to berth-bench as they are.
set -Eeuo pipefail

COUNT=20
PODS=100
CONCURRENCY=4
MAX_PODS=500
WARMUP=1
JSON=""
VS_CONTAINERD=1
KEEP=0
ONLY=""
EXTRA=()

usage() { sed -n '2,/^set -E/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --pods) PODS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --max-pods) MAX_PODS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --vs-containerd) VS_CONTAINERD=1; shift ;;
    --no-containerd) VS_CONTAINERD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33m!! %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mbench.sh: %s\033[0m\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo ./hack/bench.sh)"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
[ -f Cargo.toml ] || die "not in the berth repository: $REPO"

# ---------------------------------------------------------------------------------------
# State that the cleanup undoes (set as soon as each thing exists).
TMP=""
REGISTRY_PID=""
BERTHD_PID=""
CONTAINERD_PID=""
BRIDGE=""
SUBNET=""
SUBNET_RE=""
SYSCTL_RESTORE=()
NETNAME=""
NETNS_BEFORE=""
RUN_CONTAINERD_NEW=0

# Kill a process and, first, everything below it (leaves first), TERM then KILL.
descendants() {
  local p c
  for p in "$@"; do
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do
      descendants "$c"
      echo "$c"
    done
  done
}

stop_pid() { # pid name
  local pid=$1 name=$2
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name ($pid) did not stop on TERM: KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

kill_tree() { # pid...: the shims and the containers below them
  local all p
  all=$(descendants "$@"; echo "$@")
  for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
}

# iptables rules that mention our subnet or our CNI network name, and the chains they
# jump to (the bridge plugin's CNI-<hash> masquerade chains, portmap's CNI-DN-<hash>).
clean_iptables() {
  local table rules chains rule chain
  command -v iptables-save >/dev/null || return 0
  for table in nat filter mangle; do
    rules=$(iptables-save -t "$table" 2>/dev/null |
      grep -E -- "^-A " | grep -E -- "${SUBNET_RE}|${NETNAME}" || true)
    [ -n "$rules" ] || continue
    # the chains jumped to and the chains holding such rules (a DEL cut short leaves a
    # CNI-<hash> chain without its jump), never portmap's shared chains
    chains=$( { grep -oE -- '-j CNI-[A-Za-z0-9-]+' <<<"$rules" | awk '{print $2}'
                grep -oE -- '^-A CNI-[A-Za-z0-9-]+' <<<"$rules" | awk '{print $2}'; } |
      grep -vE '^CNI-HOSTPORT-(SETMARK|MASQ|DNAT)$' | sort -u || true)
    while IFS= read -r rule; do
      # shellcheck disable=SC2086 # iptables-save quotes what needs it; eval re-splits it
      eval "iptables -w -t $table -D ${rule#-A }" 2>/dev/null || true
    done <<<"$rules"
    for chain in $chains; do
      iptables -w -t "$table" -F "$chain" 2>/dev/null || true
      iptables -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

cleanup() {
  local rc=$? pid f m ns kv
  trap - EXIT INT TERM
  set +e
  log "cleaning up"
  # Pods left behind: berth-bench sweeps its own pods (also on SIGINT); what is left
  # (a daemon or the bench killed) goes with the daemons' shims below.
  stop_pid "$BERTHD_PID" berthd
  stop_pid "$CONTAINERD_PID" containerd
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    # berth's shims (pid files in its state dir) and containerd's (their command line
    # names our containerd socket), with the containers below them.
    local shims=()
    while IFS= read -r f; do
      pid=$(cat "$f" 2>/dev/null)
      [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$REPO/target/release/berth-shim" ] &&
        shims+=("$pid")
    done < <(find "$TMP/berth/state" -name shim.pid 2>/dev/null)
    while IFS= read -r pid; do shims+=("$pid"); done < <(pgrep -f -- "-address $TMP/containerd/" || true)
    if [ ${#shims[@]} -gt 0 ]; then
      warn "killing ${#shims[@]} leftover shim(s) and their containers"
      kill_tree "${shims[@]}"
    fi
    # runc's view of containerd's containers (runc root in $TMP)
    if [ -d "$TMP/runc" ] && command -v runc >/dev/null; then
      for ns in "$TMP"/runc/*; do
        [ -d "$ns" ] || continue
        for m in $(runc --root "$ns" list -q 2>/dev/null); do
          runc --root "$ns" delete --force "$m" >/dev/null 2>&1
        done
      done
    fi
  fi
  stop_pid "$REGISTRY_PID" docker-registry
  # network namespaces made by containerd during the run (/var/run/netns/cni-*)
  if [ -n "$NETNS_BEFORE" ] || [ -d /var/run/netns ]; then
    for ns in /var/run/netns/cni-*; do
      [ -e "$ns" ] || continue
      grep -qxF -- "$ns" <<<"$NETNS_BEFORE" && continue
      umount "$ns" 2>/dev/null; rm -f "$ns"
    done
  fi
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    # mounts under $TMP, deepest first
    awk -v t="$TMP" '$5 == t || index($5, t "/") == 1 {print $5}' /proc/self/mountinfo |
      sort -r | while IFS= read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
      done
  fi
  [ "$RUN_CONTAINERD_NEW" = 1 ] && [ -d /run/containerd ] &&
    find /run/containerd -depth -type d -empty -delete 2>/dev/null
  if [ -n "$BRIDGE" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
  fi
  [ -n "$SUBNET" ] && clean_iptables
  for kv in "${SYSCTL_RESTORE[@]}"; do sysctl -qw "$kv"; done
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
      # keep the logs of a failed run; the rest goes
      mkdir -p "$REPO/target/bench"
      local keep
      keep="$REPO/target/bench/logs-$(date +%Y%m%d-%H%M%S)"
      mkdir -p "$keep"
      cp "$TMP"/*.log "$keep"/ 2>/dev/null
      warn "logs kept in $keep"
    fi
    rm -rf --one-file-system "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # what seconds command...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not come up within ${secs}s"
}

alive() { # pid name log
  kill -0 "$1" 2>/dev/null || { tail -n 30 "$3" >&2; die "$2 exited (log above)"; }
}

# ---------------------------------------------------------------------------------------
log "1. Debian packages"
PKGS=(docker-registry containernetworking-plugins iptables iproute2 python3 curl)
[ "$VS_CONTAINERD" = 1 ] && PKGS+=(containerd runc)
MISSING=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
  # No service may start (or be restarted) by the install: a temporary policy-rc.d says
  # no. Without systemd as PID 1, deb-systemd-invoke would not start containerd anyway.
  POLICY_ADDED=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_ADDED=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MISSING[@]}" ||
    { [ "$POLICY_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  [ "$POLICY_ADDED" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
CONTAINERD_BIN=""
if [ "$VS_CONTAINERD" = 1 ]; then
  CONTAINERD_BIN=$(command -v containerd || true)
  if [ -z "$CONTAINERD_BIN" ] || ! command -v containerd-shim-runc-v2 >/dev/null || ! command -v runc >/dev/null; then
    warn "containerd, containerd-shim-runc-v2 or runc is missing: measuring berth alone"
    VS_CONTAINERD=0
  fi
fi

log "2. cargo build --release --locked --bins"
command -v cargo >/dev/null || die "cargo not found (install Rust, e.g. rustup)"
cargo build --release --locked --bins
BIN="$REPO/target/release"
for b in berthd berth-shim berth-bench berth-testimg; do
  [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done

TMP=$(mktemp -d /tmp/berth-bench.XXXXXX)
chmod 755 "$TMP"
NETNS_BEFORE=$(ls -d /var/run/netns/cni-* 2>/dev/null || true)
# containerd's shims put their sockets in /run/containerd/s whatever its state dir
[ -e /run/containerd ] || RUN_CONTAINERD_NEW=1

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

log "3. registry"
mkdir -p "$TMP/registry"
for attempt in 1 2 3 4 5; do
  ADDR="127.0.0.1:$(free_port)"
  cat >"$TMP/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $TMP/registry/storage}
  delete: {enabled: true}
  redirect: {disable: true}
http: {addr: $ADDR, secret: berth-bench}
health: {storagedriver: {enabled: false}}
EOF
  # REGISTRY_* variables would override the file
  (
    while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^REGISTRY_' || true)
    exec setsid docker-registry serve "$TMP/registry/config.yml" </dev/null >"$TMP/registry.log" 2>&1
  ) &
  REGISTRY_PID=$!
  up=0
  for _ in $(seq 100); do
    curl -fsS "http://$ADDR/v2/" >/dev/null 2>&1 && { up=1; break; }
    kill -0 "$REGISTRY_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ "$up" = 1 ] && break
  stop_pid "$REGISTRY_PID" docker-registry
  REGISTRY_PID=""
  [ "$attempt" = 5 ] && { tail -n 20 "$TMP/registry.log" >&2; die "docker-registry did not start"; }
done
echo "registry at $ADDR (pid $REGISTRY_PID)"
"$BIN/berth-testimg" push "$ADDR" >"$TMP/push.log" 2>&1 ||
  { tail -n 20 "$TMP/push.log" >&2; die "berth-testimg push failed"; }
echo "pushed berth's test images"

log "4. CNI network"
# A /20 (4094 pod addresses: both runtimes may hold --max-pods pods at once) that no
# address or route of the host overlaps, and a bridge name not in use.
for cand in $(python3 - <<'PY'
import ipaddress, random, subprocess
used = []
for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
    for tok in subprocess.run(cmd, capture_output=True, text=True).stdout.split():
        try:
            n = ipaddress.ip_network(tok, strict=False)
        except ValueError:
            continue
        if n.prefixlen > 0:
            used.append(n)
cands = list(ipaddress.ip_network("10.198.0.0/16").subnets(new_prefix=20))
random.shuffle(cands)
print(" ".join(str(c) for c in cands if not any(c.overlaps(u) for u in used)))
PY
); do
  third=$(cut -d. -f3 <<<"$cand")
  ip link show "bbench$third" >/dev/null 2>&1 && continue
  SUBNET=$cand
  BRIDGE_CANDIDATE="bbench$third"
  # the addresses of the subnet, for the iptables cleanup: 10\.198\.(16|17|...|31)\.
  SUBNET_RE="10\\.198\\.($(seq -s '|' "$third" $((third + 15))))\\."
  break
done
[ -n "$SUBNET" ] || die "no free 10.198.X.0/20 subnet"
NETNAME="berth-bench-$(basename "$TMP" | cut -d. -f2)"
mkdir -p "$TMP/cni/net.d" "$TMP/cni/ipam"
cat >"$TMP/cni/net.d/10-berth-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NETNAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE_CANDIDATE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$TMP/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
BRIDGE=$BRIDGE_CANDIDATE # made by the first pod; deleted by the cleanup from now on
CNI_BIN=/usr/lib/cni
[ -x "$CNI_BIN/bridge" ] || die "no $CNI_BIN/bridge (containernetworking-plugins)"
echo "network $NETNAME: bridge $BRIDGE, subnet $SUBNET"

# Host limits that hundreds of pods reach. Measured at 500 pods (README, benchmark
# section): containerd holds ~10 file descriptors per pod (4800 at 500; Go raises its own
# soft limit to the hard one), berthd ~20 in all; each runtime's pods and shims are ~12
# tasks per pod for containerd, ~3 for berth (6000 threads on the host at 500 containerd
# pods); idle pods make no ARP entries (gc_thresh* is not reached), no runtime uses
# inotify per pod; containerd's shims take ~14 MB each; a Linux bridge takes at most 1024
# ports (the density figure runs the runtimes one after the other, so one bridge holds at
# most --max-pods + the other figures' pods). So: the soft file limit goes to
# the hard one for the daemons, kernel.pid_max is raised if it is short (restored on
# exit), and too little memory is said up front.
ulimit -n "$(ulimit -Hn)"
NEED_FDS=$((MAX_PODS * 12 + 4096))
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge "$NEED_FDS" ] ||
  warn "open files limit $(ulimit -n) < $NEED_FDS: containerd may fail before $MAX_PODS pods (raise the hard limit: ulimit -Hn)"
NEED_PIDS=$(( (MAX_PODS * (VS_CONTAINERD * 12 + 3) + $(ps -eL --no-headers | wc -l)) * 2 ))
if [ "$(cat /proc/sys/kernel/pid_max)" -lt "$NEED_PIDS" ]; then
  SYSCTL_RESTORE+=("kernel.pid_max=$(cat /proc/sys/kernel/pid_max)")
  sysctl -qw kernel.pid_max="$NEED_PIDS"
  echo "kernel.pid_max raised to $NEED_PIDS (restored on exit)"
fi
NEED_MB=$((MAX_PODS * (VS_CONTAINERD * 16 + 3) + 1024))
AVAIL_MB=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
[ "$AVAIL_MB" -ge "$NEED_MB" ] ||
  warn "only ${AVAIL_MB} MB available, ~${NEED_MB} MB needed for $MAX_PODS pods per runtime (--max-pods)"

log "5. berthd"
mkdir -p "$TMP/berth"
cat >"$TMP/berth/berth.toml" <<EOF
root = "$TMP/berth/root"
state_dir = "$TMP/berth/state"
socket = "$TMP/berth/berth.sock"
log_level = "warn"
shim_path = "$BIN/berth-shim"

[cni]
conf_dir = "$TMP/cni/net.d"
bin_dirs = ["$CNI_BIN"]

[registry.hosts."docker.io"]
mirrors = ["http://$ADDR"]

[registry.hosts."$ADDR"]
plain_http = true
EOF
setsid "$BIN/berthd" --config "$TMP/berth/berth.toml" </dev/null >"$TMP/berthd.log" 2>&1 &
BERTHD_PID=$!
wait_for berthd 20 test -S "$TMP/berth/berth.sock"
alive "$BERTHD_PID" berthd "$TMP/berthd.log"
echo "berthd pid $BERTHD_PID"

if [ "$VS_CONTAINERD" = 1 ]; then
  log "6. containerd"
  C="$TMP/containerd"
  mkdir -p "$C/certs.d/docker.io" "$TMP/runc"
  cat >"$C/certs.d/docker.io/hosts.toml" <<EOF
server = "https://registry-1.docker.io"

[host."http://$ADDR"]
  capabilities = ["pull", "resolve"]
EOF
  # containerd gives its sandboxes oom_score_adj -998, which needs CAP_SYS_RESOURCE; without
  # it (some VMs' root lacks it) runc fails with "failed to update /proc/self/oom_score_adj:
  # Permission denied" / "can't get final child's PID from pipe: EOF". restrict_oom_score_adj
  # then clamps the score to containerd's own, as for rootless containerd.
  RESTRICT_OOM=false
  if (( (0x$(awk '/^CapEff:/ {print $2}' /proc/self/status) >> 24 & 1) == 0 )); then
    RESTRICT_OOM=true
    warn "no CAP_SYS_RESOURCE here: containerd runs with restrict_oom_score_adj = true"
  fi
  cat >"$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$C/containerd.sock"

[ttrpc]
  address = "$C/containerd.sock.ttrpc"

[debug]
  level = "${CONTAINERD_LOG_LEVEL:-warn}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/berth-test/pause:latest"
  restrict_oom_score_adj = $RESTRICT_OOM
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$TMP/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$TMP/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$C/certs.d"
EOF
  setsid "$CONTAINERD_BIN" --config "$C/config.toml" </dev/null >"$TMP/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  if ! (for _ in $(seq 300); do
          [ -S "$C/containerd.sock" ] && exit 0
          kill -0 "$CONTAINERD_PID" 2>/dev/null || exit 1
          sleep 0.1
        done; exit 1); then
    tail -n 30 "$TMP/containerd.log" >&2
    warn "containerd did not start (log above): measuring berth alone"
    stop_pid "$CONTAINERD_PID" containerd
    CONTAINERD_PID=""
    VS_CONTAINERD=0
  else
    sleep 1 # the CRI plugin registers after the socket
    alive "$CONTAINERD_PID" containerd "$TMP/containerd.log"
    echo "containerd $("$CONTAINERD_BIN" --version | awk '{print $3}') pid $CONTAINERD_PID"
  fi
fi

log "7. berth-bench"
if [ -z "$JSON" ]; then
  mkdir -p "$REPO/target/bench"
  JSON="$REPO/target/bench/bench-$(date +%Y%m%d-%H%M%S).json"
fi
ARGS=(--endpoint "unix://$TMP/berth/berth.sock" --daemon-pid "$BERTHD_PID"
      --count "$COUNT" --pods "$PODS" --concurrency "$CONCURRENCY" --max-pods "$MAX_PODS"
      --warmup "$WARMUP" --json "$JSON")
if [ "$VS_CONTAINERD" = 1 ]; then
  ARGS+=(--vs "unix://$TMP/containerd/containerd.sock" --vs-daemon-pid "$CONTAINERD_PID")
fi
[ -n "$ONLY" ] && ARGS+=(--only "$ONLY")
echo "machine: $(nproc) cores, kernel $(uname -r), $(sed -n "s/^PRETTY_NAME=\"\{0,1\}\([^\"]*\)\"\{0,1\}/\1/p" /etc/os-release)"
echo "+ berth-bench ${ARGS[*]} ${EXTRA[*]}"
"$BIN/berth-bench" "${ARGS[@]}" "${EXTRA[@]}"
echo "JSON: $JSON"
