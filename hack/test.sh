#!/usr/bin/env bash
# Run every berth test, as root on Debian 12 (CI runs it through .ci/run).
#
#   sudo ./hack/test.sh                       # everything
#   sudo ./hack/test.sh image_pull            # arguments go to `cargo test` (a name filter)
#   sudo ./hack/test.sh image -- --nocapture  # after `--`: to the test binaries
#
# 1. installs the test prerequisites (only the missing Debian packages; `apt-get update`
#    only when one is missing);
# 2. cargo build --locked --all-targets;
# 3. cargo test --locked --all-targets -- --test-threads=2: unit tests, integration tests
#    and the e2e tests. The tests themselves build the test images from busybox-static
#    (e2e/testimg.rs), start local registries (tests/common/registry.rs) and berthd
#    daemons on free loopback ports with unique temporary directories;
# 4. prints a summary and exits non-zero if anything failed.
#
# Every temporary directory of the run is under one fresh RUN_DIR (TMPDIR points there),
# and every process the run starts carries BERTH_TEST_RUN=RUN_DIR in its environment. On
# exit, also on failure or Ctrl-C, a trap kills the processes still carrying that marker
# (or running with RUN_DIR in their command line, cwd or root), unmounts whatever is
# mounted under RUN_DIR and removes it. Nothing else on the machine is touched.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# install.sh's build and runtime packages, plus what the tests use
PKGS=(gcc pkg-config libseccomp-dev libelf-dev iptables containernetworking-plugins
      ca-certificates curl
      docker-registry busybox-static apache2-utils util-linux iproute2)

START=$(date +%s)
say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - START ))s"; }

[ "$(id -u)" -eq 0 ] || die "run as root (the tests mount overlays and create namespaces): sudo $0"

# --- arguments: before `--` to cargo test, after it to the test binaries ---------------
CARGO_ARGS=()
HARNESS_ARGS=()
seen_dashdash=0
for a in "$@"; do
  if [ "$seen_dashdash" -eq 0 ] && [ "$a" = "--" ]; then
    seen_dashdash=1
  elif [ "$seen_dashdash" -eq 0 ]; then
    CARGO_ARGS+=("$a")
  else
    HARNESS_ARGS+=("$a")
  fi
done

# --- 1. packages ------------------------------------------------------------------------
missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
      || printf '%s\n' "$p"
  done
}
say "test prerequisites"
mapfile -t MISSING < <(missing_pkgs "${PKGS[@]}")
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "installing: ${MISSING[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${MISSING[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${MISSING[@]}"
  fi
else
  echo "all present: ${PKGS[*]}"
fi

# cargo: on PATH, else root's rustup
if ! command -v cargo >/dev/null; then
  for d in "${HOME:-/root}/.cargo/bin" /root/.cargo/bin; do
    if [ -x "$d/cargo" ]; then PATH=$d:$PATH; export PATH; break; fi
  done
fi
command -v cargo >/dev/null || die "cargo not found: install Rust 1.90+ with rustup (see hack/install.sh)"
echo "$(cargo --version); $(rustc --version)"
echo "docker-registry $(dpkg-query -W -f='${Version}' docker-registry); busybox-static $(dpkg-query -W -f='${Version}' busybox-static)"

# --- run directory and clean-up ---------------------------------------------------------
RUN_DIR=$(mktemp -d /tmp/berth-test.XXXXXX)
# As /var/lib and /run are on a node: user-namespaced pods' mapped roots pass through.
chmod 0711 "$RUN_DIR"
export TMPDIR=$RUN_DIR
export BERTH_TEST_RUN=$RUN_DIR
LOG_DIR=$REPO/target/berth-test-logs
mkdir -p "$LOG_DIR"
TEST_LOG=$LOG_DIR/cargo-test.log

# PIDs of processes this run started that are still alive (not this script, not its
# subshells): marked by BERTH_TEST_RUN in their environment, or naming RUN_DIR in their
# command line, cwd or root directory. Call it with the marker unexported (see
# do_cleanup) so that its own helper processes do not carry it.
run_pids() {
  local p pid env cmd
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    [ "$pid" = "${BASHPID:-}" ] && continue
    env=$( { tr '\0' '\n' <"$p/environ"; } 2>/dev/null) || continue
    if [[ $'\n'"$env"$'\n' == *$'\n'"BERTH_TEST_RUN=$RUN_DIR"$'\n'* ]]; then
      echo "$pid"; continue
    fi
    cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
    case "$cmd" in *"$RUN_DIR"*) echo "$pid"; continue ;; esac
    case "$(readlink "$p/cwd" 2>/dev/null)" in "$RUN_DIR"|"$RUN_DIR"/*) echo "$pid"; continue ;; esac
    case "$(readlink "$p/root" 2>/dev/null)" in "$RUN_DIR"/*) echo "$pid"; continue ;; esac
  done
}

# Idempotent: kill what is left of the run, unmount, remove RUN_DIR.
do_cleanup() {
  local pids m
  [ -d "$RUN_DIR" ] || return 0
  export -n BERTH_TEST_RUN TMPDIR
  mapfile -t pids < <(run_pids)
  if [ "${#pids[@]}" -gt 0 ]; then
    echo "clean-up: stopping leftover processes: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 20); do
      mapfile -t pids < <(run_pids)
      [ "${#pids[@]}" -eq 0 ] && break
      sleep 0.1
    done
    if [ "${#pids[@]}" -gt 0 ]; then
      kill -KILL "${pids[@]}" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  # overlays, pinned namespaces, bind mounts left under the run directory: deepest first
  awk -v d="$RUN_DIR" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
    | sort -r | while IFS= read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "clean-up: cannot unmount $m"
      done
  rm -rf --one-file-system "$RUN_DIR" || echo "clean-up: could not remove all of $RUN_DIR"
}

on_exit() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  do_cleanup
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 2. build ---------------------------------------------------------------------------
say "cargo build --locked --all-targets"
cargo build --locked --all-targets

# --- 3. test ----------------------------------------------------------------------------
say "cargo test --locked --all-targets ${CARGO_ARGS[*]} -- --test-threads=2 ${HARNESS_ARGS[*]}"
# Output goes to the log file and is followed from there (not piped through tee: a
# process that a test leaked with our stdout would keep the pipe open for ever).
set +e
cargo test --locked --all-targets "${CARGO_ARGS[@]}" -- --test-threads=2 "${HARNESS_ARGS[@]}" \
  >"$TEST_LOG" 2>&1 </dev/null &
CARGO_PID=$!
tail -n +1 -f --pid="$CARGO_PID" "$TEST_LOG"
wait "$CARGO_PID"
TEST_STATUS=$?
set -e

# --- 4. summary -------------------------------------------------------------------------
do_cleanup   # before the summary, so that the summary is the last thing printed

read -r PASSED FAILED IGNORED BINARIES < <(awk '
  /^test result:/ {
    for (i = 2; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/)  p += $(i-1)
      if ($(i) ~ /^failed;?$/)  f += $(i-1)
      if ($(i) ~ /^ignored;?$/) g += $(i-1)
    }
    n++
  }
  END { printf "%d %d %d %d\n", p, f, g, n }' "$TEST_LOG")

say "summary ($(elapsed); full output in $TEST_LOG)"
echo "test binaries run: $BINARIES"
if grep -q '^failures:$' "$TEST_LOG"; then
  echo "failed tests:"
  awk '/^failures:$/ { f = 1; next } f && /^    [^ ]+$/ { print } /^test result:/ { f = 0 }' "$TEST_LOG" | sort -u
fi
RESULT="RESULT: OK"
if [ "$TEST_STATUS" -ne 0 ]; then
  # a test binary that crashed, or a build failure, counts as a failure
  [ "$FAILED" -eq 0 ] && FAILED=1
  RESULT="RESULT: FAILED (cargo test exited $TEST_STATUS)"
elif [ "$BINARIES" -eq 0 ] || [ "$PASSED" -eq 0 ]; then
  RESULT="RESULT: FAILED (no test ran)"
  TEST_STATUS=1
fi
echo "$RESULT"
echo "summary: $PASSED passed, $FAILED failed, $IGNORED skipped"
[ "$TEST_STATUS" -eq 0 ] || exit 1
