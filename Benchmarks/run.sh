#!/usr/bin/env bash
# Runs the FilterBank package-benchmark suite and the malloc threshold check.
#
#   Benchmarks/run.sh            run + `thresholds check` (exit 1 if mallocs regressed)
#   Benchmarks/run.sh --update   rewrite Benchmarks/Thresholds/*.json, trimmed to
#                                        mallocCountTotal only (time thresholds fail on noise)
#
# Only the FilterBankBench target is a package-benchmark suite; BankProfile is a plain
# executable in the same package, hence --target. The machine load is printed with the results
# because wall-clock figures on a shared machine are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")"
echo "== $(date -u +%FT%TZ)  $(lscpu | sed -n 's/^Model name: *//p')  nproc=$(nproc)  load:$(uptime | sed 's/.*load average://')"

if [[ "${1:-}" == "--update" ]]; then
    swift package --allow-writing-to-package-directory benchmark thresholds update \
        --target FilterBankBench --path Thresholds --no-progress
    # Keep mallocCountTotal only.
    for f in Thresholds/*.json; do
        python3 - "$f" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
json.dump({"mallocCountTotal": d["mallocCountTotal"]}, open(p, "w"), indent=2, sort_keys=True)
open(p, "a").write("\n")
PY
    done
    echo "thresholds written:"; ls Thresholds
    exit 0
fi

swift package benchmark --target FilterBankBench --no-progress
echo "== thresholds check (mallocCountTotal), load:$(uptime | sed 's/.*load average://')"
swift package benchmark thresholds check --target FilterBankBench --path Thresholds --no-progress
