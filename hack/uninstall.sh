#!/usr/bin/env bash
# Stop berthd and remove what hack/install.sh installed, as root.
#
#   sudo ./hack/uninstall.sh           # keeps data (/var/lib/berth), logs and edited configs
#   sudo ./hack/uninstall.sh --purge   # also the data and state dirs, logs and configs
#
# Removes the paths install.sh recorded in /etc/berth/.installed-files (binaries, systemd
# unit, and the config / CNI conflist if install.sh wrote them). A config that differs from
# the repository's copy is kept unless --purge. Debian packages stay installed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG=/etc/berth/berth.toml
MANIFEST=/etc/berth/.installed-files
UNIT=/etc/systemd/system/berthd.service
PIDFILE=/run/berth/berthd.pid
LOGDIR=/var/log/berth

PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }

# Read the data/state dirs before the config goes away.
toml_top() { # KEY DEFAULT: a top-level string key of the config
  local v=""
  if [ -f "$CONFIG" ]; then
    v=$(awk -F= -v k="$1" '/^[[:space:]]*\[/ { exit }
      $1 ~ "^[[:space:]]*" k "[[:space:]]*$" { v=$2; gsub(/^[[:space:]]*"|"[[:space:]]*(#.*)?$/, "", v); print v; exit }' "$CONFIG")
  fi
  printf '%s\n' "${v:-$2}"
}
ROOT=$(toml_top root /var/lib/berth)
STATE=$(toml_top state_dir /run/berth)
SOCKET=$(toml_top socket /run/berth/berth.sock)

# --- stop ------------------------------------------------------------------------------
if command -v systemctl >/dev/null && [ -d /run/systemd/system ] && [ -f "$UNIT" ]; then
  say "stopping and disabling berthd.service"
  systemctl disable --now berthd.service || true
fi
if [ -f "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = berthd ]; then
    say "stopping berthd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = berthd ] || break
      sleep 0.1
    done
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = berthd ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDFILE"
fi
rm -f "$SOCKET"

# --- remove what install.sh wrote -----------------------------------------------------
if [ -f "$MANIFEST" ]; then
  while IFS= read -r path; do
    [ -n "$path" ] || continue
    [ -e "$path" ] || continue
    case "$path" in
      "$CONFIG") shipped=$REPO/config/berth.toml ;;
      /etc/cni/net.d/*) shipped=$REPO/config/$(basename "$path") ;;
      *) shipped="" ;;
    esac
    if [ -n "$shipped" ] && [ "$PURGE" -eq 0 ] && ! cmp -s "$path" "$shipped"; then
      say "keeping $path (edited; --purge removes it)"
      continue
    fi
    rm -f "$path"
    say "removed $path"
  done <"$MANIFEST"
  rm -f "$MANIFEST"
else
  say "no $MANIFEST: nothing recorded by install.sh"
fi
if [ "$PURGE" -eq 1 ] && [ -f "$CONFIG" ]; then
  rm -f "$CONFIG"
  say "removed $CONFIG"
fi
rmdir /etc/berth 2>/dev/null || true
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi

# --- purge: data, state, logs -----------------------------------------------------------
unmount_under() { # unmount everything mounted below $1, deepest first
  local dir=$1 m
  [ -d "$dir" ] || return 0
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
    | sort -r | while IFS= read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
      done
}
if [ "$PURGE" -eq 1 ]; then
  for d in "$STATE" "$ROOT"; do
    case "$d" in /|/usr|/etc|/var|/run|/home|/root|"") echo "refusing to purge $d" >&2; continue ;; esac
    if [ -d "$d" ]; then
      unmount_under "$d"
      rm -rf --one-file-system "$d"
      say "removed $d"
    fi
  done
  rm -rf "$LOGDIR"
  say "removed $LOGDIR"
else
  say "kept $ROOT and $LOGDIR (--purge removes them)"
fi
say "berth uninstalled"
