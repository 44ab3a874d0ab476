#!/usr/bin/env bash
# Upper vs lower vs both tails at ResNet-50 width (K = 26,560), one core, in one interleaved run
# (BENCHMARKS.md, "Two tails"). Usage:
#   Benchmarks/drivers/bench_tails.sh NEW_SALIENCYCTL [BASE_SALIENCYCTL] [ROUNDS] [PREDICTIONS]
# NEW is a release build with `bench --tails`; BASE (optional) a release build of the commit
# before the lower tail ("today's upper path"). Prints one JSON line per run with `uptime`.
set -euo pipefail
NEW=$1; BASE=${2:-}; ROUNDS=${3:-3}; N=${4:-60000}
for round in $(seq 1 "$ROUNDS"); do
  for level in 0.90 0.98; do
    if [ -n "$BASE" ]; then
      echo "{\"round\":$round,\"build\":\"base\",\"uptime\":\"$(uptime | sed 's/.*load average: //')\",\"result\":$("$BASE" bench --json --filters 26560 --predictions "$N" --level "$level")}"
    fi
    for tails in upper lower both; do
      echo "{\"round\":$round,\"build\":\"new\",\"uptime\":\"$(uptime | sed 's/.*load average: //')\",\"result\":$("$NEW" bench --json --filters 26560 --predictions "$N" --level "$level" --tails "$tails")}"
    done
  done
done
