#!/usr/bin/env bash
# Install and start berthd on Debian 12, as root. Idempotent: run it again to rebuild,
# reinstall and restart.
#
#   sudo ./hack/install.sh
#
# 1. apt-get installs the build and runtime dependencies (only the missing ones);
# 2. builds the release binaries (cargo build --release --locked --bins);
# 3. installs berthd (and berth-shim when it exists) into /usr/local/bin;
# 4. writes /etc/berth/berth.toml and /etc/cni/net.d/10-berth-bridge.conflist unless
#    there already is a config / a .conflist;
# 5. starts berthd: as the systemd unit berthd.service where systemd runs, otherwise as
#    a background daemon (pid file /run/berth/berthd.pid, log /var/log/berth/berthd.log);
# 6. waits for the CRI socket and prints the crictl line that reaches it.
#
# hack/uninstall.sh undoes it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/usr/local/bin
CONFIG=/etc/berth/berth.toml
CNI_DIR=/etc/cni/net.d
CNI_CONF=$CNI_DIR/10-berth-bridge.conflist
UNIT=/etc/systemd/system/berthd.service
PIDFILE=/run/berth/berthd.pid
LOGDIR=/var/log/berth
LOG=$LOGDIR/berthd.log
# What this script created, one path a line: hack/uninstall.sh removes those.
MANIFEST=/etc/berth/.installed-files
SOCKET_WAIT=${BERTH_SOCKET_WAIT:-60}

PKGS=(gcc pkg-config libseccomp-dev libelf-dev iptables containernetworking-plugins
      ca-certificates curl)

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
command -v apt-get >/dev/null || die "this script is for Debian (apt-get not found)"

# --- 1. packages -------------------------------------------------------------------
missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
      || printf '%s\n' "$p"
  done
}

apt_install() {
  local missing
  mapfile -t missing < <(missing_pkgs "$@")
  if [ "${#missing[@]}" -eq 0 ]; then
    say "Debian packages present: $*"
    return 0
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # update the package lists only when something is missing, and retry the install once
  # with fresh lists if the old ones were stale
  if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

apt_install "${PKGS[@]}"

# --- 2. build ----------------------------------------------------------------------
# cargo: on PATH, else root's rustup (~/.cargo/bin, not on sudo's secure_path).
find_cargo() {
  if command -v cargo >/dev/null; then
    command -v cargo
  elif [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    printf '%s\n' "${HOME:-/root}/.cargo/bin/cargo"
  elif [ -x /root/.cargo/bin/cargo ]; then
    printf '%s\n' /root/.cargo/bin/cargo
  else
    return 1
  fi
}

if ! CARGO=$(find_cargo); then
  cat >&2 <<'EOF'
install.sh: cargo (Rust) is not installed for root.

berth needs Rust 1.90 or newer; Debian 12's own rustc/cargo packages are too old.
Install it with rustup (https://rustup.rs). Download the installer, read it, run it:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs -o /tmp/rustup-init.sh
    less /tmp/rustup-init.sh
    sh /tmp/rustup-init.sh -y --profile minimal
    . "$HOME/.cargo/env"

then run this script again.
EOF
  exit 1
fi
PATH=$(dirname "$CARGO"):$PATH
export PATH

say "building release binaries ($("$CARGO" --version))"
(cd "$REPO" && "$CARGO" build --release --locked --bins)

# --- 3. binaries -------------------------------------------------------------------
mkdir -p /etc/berth
touch "$MANIFEST"
record() { grep -qxF "$1" "$MANIFEST" || printf '%s\n' "$1" >>"$MANIFEST"; }

install_bin() {
  local name=$1 src=$REPO/target/release/$1
  [ -x "$src" ] || return 0
  # copy then rename: replaces a running binary without "text file busy"
  install -m 0755 "$src" "$PREFIX/.$name.new"
  mv -f "$PREFIX/.$name.new" "$PREFIX/$name"
  record "$PREFIX/$name"
  say "installed $PREFIX/$name"
}
[ -x "$REPO/target/release/berthd" ] || die "the build produced no target/release/berthd"
install_bin berthd
install_bin berth-shim

# --- 4. config and CNI -------------------------------------------------------------
if [ -e "$CONFIG" ]; then
  say "keeping existing $CONFIG"
else
  install -m 0644 "$REPO/config/berth.toml" "$CONFIG"
  record "$CONFIG"
  say "wrote $CONFIG"
fi

mkdir -p "$CNI_DIR"
conflists=("$CNI_DIR"/*.conflist)
if [ -e "${conflists[0]}" ]; then
  say "keeping the CNI configuration in $CNI_DIR (${conflists[0]##*/} is used first)"
else
  install -m 0644 "$REPO/config/10-berth-bridge.conflist" "$CNI_CONF"
  record "$CNI_CONF"
  say "wrote $CNI_CONF"
fi

# The socket path as the config says (top-level key), default /run/berth/berth.sock.
SOCKET=$(awk -F= '/^[[:space:]]*\[/ { exit }
  /^[[:space:]]*socket[[:space:]]*=/ { v=$2; gsub(/^[[:space:]]*"|"[[:space:]]*(#.*)?$/, "", v); print v; exit }' "$CONFIG")
SOCKET=${SOCKET:-/run/berth/berth.sock}

# --- 5. start ----------------------------------------------------------------------
systemd_running() {
  [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] \
    && command -v systemctl >/dev/null
}

pid_is_berthd() { [ -n "${1:-}" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = berthd ]; }

stop_pidfile_daemon() {
  local pid i
  [ -f "$PIDFILE" ] || return 0
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if pid_is_berthd "$pid"; then
    say "stopping the previous berthd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      pid_is_berthd "$pid" || break
      sleep 0.1
    done
    if pid_is_berthd "$pid"; then
      say "berthd $pid did not stop within 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$PIDFILE"
}

if systemd_running; then
  stop_pidfile_daemon   # a daemon started before systemd was there
  install -m 0644 "$REPO/deploy/berthd.service" "$UNIT"
  record "$UNIT"
  systemctl daemon-reload
  systemctl enable berthd.service
  # restart: picks up the new binary if it was already running, starts it otherwise
  systemctl restart berthd.service
  say "berthd started by systemd (systemctl status berthd; journalctl -u berthd)"
  MODE=systemd
else
  stop_pidfile_daemon
  mkdir -p "$(dirname "$PIDFILE")" "$LOGDIR"
  # A new session, no terminal; the inner shell writes its own pid and execs berthd, so
  # the pid file holds berthd's pid whether or not setsid had to fork.
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' berthd-start "$PIDFILE" \
    "$PREFIX/berthd" --config "$CONFIG" </dev/null >>"$LOG" 2>&1 &
  MODE=daemon
fi

# --- 6. wait for the socket --------------------------------------------------------
# Up means connectable: a socket file left by the previous instance refuses connections
# (curl exit 7 = could not connect; any other answer means something accepted).
socket_up() {
  local rc=0
  [ -S "$SOCKET" ] || return 1
  curl -s -o /dev/null --max-time 2 --http2-prior-knowledge --unix-socket "$SOCKET" \
    http://localhost/ || rc=$?
  [ "$rc" -ne 7 ]
}
say "waiting for $SOCKET"
for i in $(seq 1 $((SOCKET_WAIT * 10))); do
  socket_up && break
  if [ "$MODE" = daemon ] && [ "$i" -gt 5 ] && ! pid_is_berthd "$(cat "$PIDFILE" 2>/dev/null || true)"; then
    printf 'install.sh: berthd exited; the end of %s:\n' "$LOG" >&2
    tail -n 30 "$LOG" >&2 || true
    exit 1
  fi
  if [ "$MODE" = systemd ] && ! systemctl is-active --quiet berthd.service \
     && systemctl is-failed --quiet berthd.service; then
    systemctl status --no-pager berthd.service >&2 || true
    journalctl -u berthd.service -n 30 --no-pager >&2 || true
    exit 1
  fi
  sleep 0.1
done
if ! socket_up; then
  echo "install.sh: no socket at $SOCKET after ${SOCKET_WAIT}s" >&2
  if [ "$MODE" = daemon ]; then tail -n 30 "$LOG" >&2 || true; else journalctl -u berthd.service -n 30 --no-pager >&2 || true; fi
  exit 1
fi

if [ "$MODE" = daemon ]; then
  say "berthd running (pid $(cat "$PIDFILE")), log $LOG"
fi
echo
echo "berthd is up. Reach it with:"
echo
echo "    crictl --runtime-endpoint unix://$SOCKET version"
echo
if command -v crictl >/dev/null; then
  crictl --runtime-endpoint "unix://$SOCKET" version || true
fi
