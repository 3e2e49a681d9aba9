#!/usr/bin/env bash
# CI entry of the cross-host NFS suite (.ci/run calls it; docs/nfs-crosshost.md).
#
# Brings the UML lab up in a fresh temporary directory (the runner does that
# with --lab-dir and tears it down itself, by pid), runs relockd <-> relockd and
# relockd <-> the real virtlockd, both directions, over NFSv4.2 and NFSv3, and
# then makes sure nothing of the lab is left, whatever happened to the runner
# (a failed step, a hung guest, SIGKILL, the time limit): the lab's
# `down --purge --hard` SIGKILLs each guest's recorded process group and every
# pid still in the lab's network namespace; a UML process still naming this
# lab's work directory (mh_work=DIR on its command line) is SIGKILLed by pid.
# Anything this teardown had to remove after the runner is a failure of its own.
#
# Ends with the runner's `N passed, N failed` line (one more failure when the
# teardown found leftovers, or when the runner died without a summary).
#   test/nfs/ci.sh [crosshost.ts options]      (root; packages: see test/nfs/lab/README.md)
set -uo pipefail
cd "$(dirname "$0")/../.."
# The guests see the host's root read-only but have their own /tmp, /run, /mnt
# and /var/tmp: a checkout there (a CI clone in /tmp) is invisible to them. Run
# from a copy in the home directory instead (hard links where possible).
case "$(pwd -P)/" in
  /tmp/*|/var/tmp/*|/run/*|/mnt/*)
    if [ -z "${RELOCKD_NFS_CI_COPY:-}" ]; then
      copy=$(mktemp -d "${HOME:-/root}/.relockd-ci-nfs-src.XXXXXX")
      trap 'rm -rf "$copy"; exit 130' INT TERM HUP
      cp -al . "$copy/" 2>/dev/null || { rm -rf "$copy"; mkdir -p "$copy"; cp -a . "$copy/"; }
      echo "nfs-ci: the checkout $(pwd -P) is hidden from the guests; running from a copy in $copy"
      RELOCKD_NFS_CI_COPY=1 bash "$copy/test/nfs/ci.sh" "$@"
      rc=$?
      rm -rf "$copy"
      exit "$rc"
    fi
    ;;
esac
LAB_SCRIPT=test/nfs/lab/multihost-setup.sh
tmp=$(mktemp -d /tmp/relockd-ci-nfs.XXXXXX)
lab=$tmp/lab
log=$tmp/runner.log
t0=$(date +%s)

# UML processes of this lab, by the exact work directory on their command line
lab_pids() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qxF "mh_work=$lab" && echo "${p#/proc/}"
  done
}

leftovers=
teardown() {
  local pids
  if [ -d "$lab" ]; then
    leftovers="the lab directory $lab"
    bash "$LAB_SCRIPT" down "$lab" --purge --hard 2>&1 | sed 's/^/nfs-ci: teardown: /'
  fi
  pids=$(lab_pids | tr '\n' ' ')
  if [ -n "${pids// }" ]; then
    leftovers="${leftovers:+$leftovers, }UML processes $pids"
    echo "nfs-ci: SIGKILL of UML processes of the lab still running: $pids"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null
    sleep 1
    pids=$(lab_pids | tr '\n' ' ')
    [ -z "${pids// }" ] || echo "nfs-ci: STILL ALIVE after SIGKILL: $pids"
  fi
  rm -rf "$tmp"
}
trap 'teardown; exit 130' INT TERM HUP

if ! npm run build:if-stale >"$tmp/build.log" 2>&1; then
  echo "nfs-ci: the build failed:"; tail -20 "$tmp/build.log"
  teardown; echo "0 passed, 1 failed"; exit 1
fi

# The runner's own limit (--time-limit) stops and cleans up; timeout(1) is the
# backstop for a runner that hangs in its cleanup (then the teardown above).
# RELOCKD_NFS_CI_SUITE: another runner with the same --lab-dir/--time-limit contract (test/nfs/lockloss.ts).
timeout -k 30 "${RELOCKD_NFS_CI_TIMEOUT:-960}" node --import=@tapjs/typescript/import "${RELOCKD_NFS_CI_SUITE:-test/nfs/crosshost.ts}" --lab-dir="$lab" --time-limit="${RELOCKD_NFS_CI_LIMIT:-900}" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
npass=$(sed -nE 's/^([0-9]+) passed.*/\1/p' <<<"$summary"); nfail=$(sed -nE 's/.* ([0-9]+) failed$/\1/p' <<<"$summary")
npass=${npass:-0}; nfail=${nfail:-0}
teardown
trap - INT TERM HUP
if [ -n "$leftovers" ]; then
  echo "FAIL  nfs-ci teardown: the runner (exit $rc) left $leftovers; removed by this script"
  nfail=$((nfail + 1)); [ "$rc" -ne 0 ] || rc=1
fi
if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
  echo "FAIL  nfs-ci: the runner exited $rc without reporting a failure"
  nfail=1
fi
echo "nfs-ci: wall time $(( $(date +%s) - t0 )) s (build, lab up, suite, teardown)"
echo "$npass passed, $nfail failed"
exit "$rc"
