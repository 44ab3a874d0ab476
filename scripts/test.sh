#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, builds, runs every test.
# Usage: scripts/test.sh            (CI calls exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }

step "system packages (libzmq3-dev, systemd for unit checks, prometheus, alertmanager, chromium)"
need=()
pkg-config --exists libzmq 2>/dev/null || need+=(libzmq3-dev pkg-config)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The neighbours the integration tests run for real, on loopback (docs/operations.md):
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "python packages (tap, reference scripts, tests)"
# A failed install fails the run (pipefail); only pip's root warning is filtered.
pipq() { python3 -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "WARNING: Running pip as the 'root'" || true; }; }
pipq numpy scipy pyzmq pytest 'torch==2.13.0'
pipq --no-build-isolation --no-deps -e clients/python

step "swift build (debug, with tests; layering checked)"
# A failed build fails the run (an old binary left in .build must never be tested instead).
# --explicit-target-dependency-import-check: a module may import only the targets Package.swift
# lists for it (the layering of docs/architecture.md), transitive imports included.
buildlog=$(mktemp)
if ! swift build --build-tests --explicit-target-dependency-import-check error >"$buildlog" 2>&1; then
    cat "$buildlog"; echo "swift build failed"; exit 1
fi
grep -vE "^\[[0-9]+/[0-9]+\]|prohibited flag" "$buildlog" || true
rm -f "$buildlog"
test -x .build/debug/saliencyd && test -x .build/debug/saliencyctl

step "swift test"
export SALIENCYD_BIN="$root/.build/debug/saliencyd" SALIENCYCTL="$root/.build/debug/saliencyctl"
# Per-test "passed"/"started" lines are dropped; failures, suites and the closing line stay.
set -o pipefail
swift test --skip-build 2>&1 | awk '/^✔ Test run with/ || !(/^✔ Test / || /^◇ Test .* started/)' 

step "python tests (tap, daemon round trip, synthetic evaluation)"
pytest_dirs=(clients/python/tests)
[ -d Tests/Python ] && pytest_dirs+=(Tests/Python)
python3 -m pytest -q "${pytest_dirs[@]}"

step "systemd unit and example configuration"
bash Tests/System/check_systemd.sh "$root/.build/debug/saliencyd"

step "FilterBank invariants (a second build with -DSALIENCY_INVARIANTS, EVTOnline tests only)"
swift test --scratch-path .build-invariants -Xswiftc -DSALIENCY_INVARIANTS --filter EVTOnlineTests 2>&1 \
    | awk '/^✔ Test run with/ || /error:/ || !(/^✔ Test / || /^◇ Test .* started/ || /^\[[0-9]+\/[0-9]+\]/)'

step "fuzzing: reproducers of past findings, then a short pass per target (docs/fuzzing.md)"
bash Fuzz/run.sh --replay
bash Fuzz/run.sh "${FUZZ_SECONDS:-20}"

step "all checks passed"
