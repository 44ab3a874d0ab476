#!/usr/bin/env bash
# Builds the libFuzzer targets of saliencyd (Fuzz/Package.swift) and runs each over its corpus,
# one target at a time. docs/fuzzing.md has the details and the measured runs.
#
#   Fuzz/run.sh [SECONDS_PER_TARGET] [RUNS]   fuzz every target for SECONDS (default 20) or RUNS
#                                             executions (default: unlimited), whichever ends first;
#                                             SECONDS = 0 means no time limit
#   Fuzz/run.sh 0 1000000                     the long pass: 10^6 runs per target
#   Fuzz/run.sh --replay                      run every reproducer in Fuzz/regressions/ once; fails
#                                             while any of them still crashes
#
# Environment:
#   FUZZ_TARGETS     space-separated subset (default: all five)
#   FUZZ_SANITIZER   "address" (default: libFuzzer + AddressSanitizer) or "none" (libFuzzer only)
#   FUZZ_SKIP_BUILD  1: use the binaries already built
#   FUZZ_JOBS        swift build -j (default 2)
#
# Writes: Fuzz/.build (scratch), Fuzz/.work/<Target> (corpus grown by the fuzzer, kept between
# runs), Fuzz/artifacts/<Target>/ (crash-*, timeout-*, oom-*, leak-* inputs), Fuzz/logs/<Target>.log.
# The committed seeds in Fuzz/corpus/<Target> are read, never written.
# Exit status: 0 when every target ran clean; 1 on any crash, timeout, OOM or leak; 2 on a build failure.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

targets=${FUZZ_TARGETS:-"FuzzSchema FuzzQuery FuzzConfig FuzzAlertLog FuzzSnapshot"}
sanitizer=${FUZZ_SANITIZER:-address}
replay=0
if [[ ${1:-} == "--replay" ]]; then replay=1; shift; fi
seconds=${1:-20}
runs=${2:--1}

case "$sanitizer" in
    address) swift_san="fuzzer,address"; c_san=(-Xcc -fsanitize=address -Xcxx -fsanitize=address) ;;
    none) swift_san="fuzzer"; c_san=() ;;
    *) echo "FUZZ_SANITIZER must be address or none" >&2; exit 2 ;;
esac

# SwiftPM's --sanitize fuzzer instruments C/C++ targets and keeps executables' entry point
# untouched (libFuzzer brings main); Swift needs ONE combined -sanitize= flag (the last one wins),
# hence -Xswiftc -sanitize=fuzzer,address after it. -parse-as-library: the harnesses have no main.
build_flags=(-c release --scratch-path "$here/.build" -j "${FUZZ_JOBS:-2}"
    --sanitize fuzzer -Xswiftc "-sanitize=$swift_san" -Xswiftc -parse-as-library "${c_san[@]}")

if [[ ${FUZZ_SKIP_BUILD:-0} != 1 ]]; then
    echo "== building fuzz targets ($swift_san)"
    : >"$here/.build-log.txt"
    # Product by product: a plain `swift build` would also build every other target of the
    # dependencies (test kits, ArgumentParser), which the harnesses never link.
    for t in $targets; do
        if ! swift build "${build_flags[@]}" --product "$t" >>"$here/.build-log.txt" 2>&1; then
            tail -40 "$here/.build-log.txt" >&2
            echo "fuzz build of $t failed (full log: Fuzz/.build-log.txt)" >&2
            exit 2
        fi
    done
fi
bindir=$(swift build "${build_flags[@]}" --show-bin-path 2>/dev/null)

# Per-target limits. FuzzSnapshot: max_len covers the real snapshot seeds (11-15 KB payloads).
# FuzzAlertLog: 8 KiB holds more lines than its max_entries (8) and keeps runs cheap (each one
# writes, loads and rewrites the file); longer seed logs are truncated to it.
declare -A max_len=([FuzzSchema]=8192 [FuzzQuery]=4096 [FuzzConfig]=16384 [FuzzAlertLog]=8192 [FuzzSnapshot]=32768)
declare -A dict=([FuzzSchema]=schema [FuzzQuery]=query [FuzzConfig]=config [FuzzAlertLog]=alertlog [FuzzSnapshot]=snapshot)

# Swift's runtime keeps metadata caches that LeakSanitizer would report at exit; leaks are not
# checked (runaway memory is: -rss_limit_mb / -malloc_limit_mb).
export ASAN_OPTIONS=${ASAN_OPTIONS:-"detect_leaks=0:allocator_may_return_null=0:handle_abort=1:symbolize=1"}
# The Swift runtime's crash backtracer makes a crashing child hang under -minimize_crash (and
# adds nothing to ASan's report): off.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}

common=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 -detect_leaks=0)

status=0
summary=()
mkdir -p "$here/logs"

if [[ $replay == 1 ]]; then
    for t in $targets; do
        dir="$here/regressions/$t"
        [[ -d $dir ]] || continue
        for f in "$dir"/*; do
            [[ -f $f ]] || continue
            if "$bindir/$t" "${common[@]}" -runs=1 "$f" >"$here/logs/replay-$t-$(basename "$f").log" 2>&1; then
                summary+=("fixed   $t $(basename "$f")")
            else
                summary+=("CRASHES $t $(basename "$f") (log: Fuzz/logs/replay-$t-$(basename "$f").log)")
                status=1
            fi
            rm -rf /dev/shm/saliencyd-fuzz-* 2>/dev/null || true
        done
    done
    printf '%s\n' "${summary[@]:-no reproducers}"
    exit $status
fi

for t in $targets; do
    work="$here/.work/$t"
    art="$here/artifacts/$t"
    log="$here/logs/$t.log"
    mkdir -p "$work" "$art"
    before=$(ls "$art" | wc -l)
    args=("${common[@]}" -max_len="${max_len[$t]}" -dict="$here/dict/${dict[$t]}.dict"
          -artifact_prefix="$art/" -max_total_time="$seconds" -runs="$runs")
    echo "== $t: ${seconds}s / runs ${runs} (log: Fuzz/logs/$t.log)"
    start=$(date +%s)
    "$bindir/$t" "${args[@]}" "$work" "$here/corpus/$t" >"$log" 2>&1 &
    pid=$!
    wait $pid
    rc=$?
    rm -rf "/dev/shm/saliencyd-fuzz-$pid"
    elapsed=$(( $(date +%s) - start ))
    after=$(ls "$art" | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]*' | tail -1)
    ft=$(grep -E '^#[0-9]+' "$log" | grep -o 'ft: [0-9]*' | tail -1)
    corp=$(grep -E '^#[0-9]+' "$log" | grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' | tail -1)
    line="$t: rc=$rc runs=${execs:-?} exec/s=${eps:-?} ${cov:-cov: ?} ${ft:-ft: ?} ${corp:-corp: ?} time=${elapsed}s"
    if [[ $rc != 0 || $after -gt $before ]]; then
        status=1
        line="$line  FAILED: new artifacts in Fuzz/artifacts/$t/ ($((after - before)))"
        grep -E 'ERROR: libFuzzer|ERROR: AddressSanitizer|Fatal error|SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/    /'
    fi
    echo "$line"
    summary+=("$line")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
