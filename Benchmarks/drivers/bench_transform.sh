#!/usr/bin/env bash
# Row transforms (none vs layer-logres vs layer-ratio) at ResNet-50 width (K = 26,560, its 53 conv
# layers), one core, interleaved in one run (BENCHMARKS.md, "Common-mode-free row transforms").
# Usage: Benchmarks/drivers/bench_transform.sh SALIENCYCTL [ROUNDS] [PREDICTIONS] [TAILS]
# SALIENCYCTL is a release build (e.g. swift build -c release --scratch-path .build-rel-cm --product saliencyctl).
# One JSON line per run: `bench --json` (ns_per_value of the whole update, transform included, and
# transform_ns_per_value of the transform alone) with the load average.
set -euo pipefail
CTL=$1; ROUNDS=${2:-3}; N=${3:-20000}; TAILS=${4:-upper}
for round in $(seq 1 "$ROUNDS"); do
  for transform in none layer-logres layer-ratio; do
    echo "{\"round\":$round,\"uptime\":\"$(uptime | sed 's/.*load average: //')\",\"result\":$("$CTL" bench --json --filters 26560 --predictions "$N" --tails "$TAILS" --transform "$transform")}"
  done
done
