#!/usr/bin/env bash
# The main job: build saliencyd, start it on its embedded defaults, replay the bundled recorded
# feed of a real CNN (Fashion-MNIST; calibration → clean traffic → a domain shift: inverted
# images), and show alerts and the top salient filters as they happen; then stop it cleanly.
#
#   scripts/demo.sh            (SPEED=… multiplies the replay rate; KEEP_STATE=1 keeps the state dir)
set -euo pipefail
cd "$(dirname "$0")/.."
feed=data/feeds/fmnist
speed=${SPEED:-1}

if ! pkg-config --exists libzmq 2>/dev/null; then
    echo "==> installing libzmq3-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq libzmq3-dev pkg-config >/dev/null
fi
echo "==> building (release; the first build takes a few minutes)"
swift build -c release 2>&1 | grep -E "error|warning: unre|Compiling saliency|Build" || true
bin=$(swift build -c release --show-bin-path)
ctl="$bin/saliencyctl"

state=$(mktemp -d /tmp/saliencyd-demo.XXXXXX)
echo "==> starting saliencyd with its defaults (feed tcp://127.0.0.1:5560, alerts :5561, queries :5562, metrics :9464); state in $state"
"$bin/saliencyd" --state-dir "$state" 2> "$state/saliencyd.log" &
daemon=$!
cleanup() {
    kill "$follower" 2>/dev/null || true
    if kill -0 "$daemon" 2>/dev/null; then kill -TERM "$daemon"; wait "$daemon" || true; fi
    [ -n "${KEEP_STATE:-}" ] || rm -rf "$state"
}
follower=
trap cleanup EXIT
for _ in $(seq 50); do "$ctl" status --timeout 0.2 >/dev/null 2>&1 && break; sleep 0.1; done

"$ctl" alerts --follow &
follower=$!

rate() { awk -v r="$1" -v s="$speed" 'BEGIN { print r * s }'; }
echo; echo "==> 1/3 calibration: 1000 reference predictions (clean test images, true labels)"
"$ctl" replay "$feed/reference.npy" --schema "$feed/reference.schema.json" --rate "$(rate 2000)" --producer-id 1
sleep 1
"$ctl" status
echo; echo "==> 2/3 clean traffic: 300 predictions — expect no alerts (false-alarm budget: 1 per 10^6 predictions)"
"$ctl" replay "$feed/clean.npy" --schema "$feed/clean.schema.json" --rate "$(rate 100)" --producer-id 2
sleep 1
"$ctl" top --model fmnist-cnn -k 10 --window 32
echo; echo "==> 3/3 domain shift: 300 inverted images — alerts fire on the filters that turn extreme"
"$ctl" replay "$feed/shifted.npy" --schema "$feed/shifted.schema.json" --rate "$(rate 100)" --producer-id 3
sleep 1.5
echo; echo "==> top filters over the last 32 shifted predictions, POT (tail probability) vs z-score"
"$ctl" top --model fmnist-cnn -k 10 --window 32 --by pot
"$ctl" top --model fmnist-cnn -k 10 --window 32 --by zscore
echo; echo "==> firing alerts per layer"
"$ctl" alerts --summary
echo; "$ctl" status
echo; echo "==> stopping saliencyd (SIGTERM: state is written, exit 0)"
kill "$follower" 2>/dev/null || true
kill -TERM "$daemon"; rc=0; wait "$daemon" || rc=$?
echo "saliencyd exited with status $rc; its log:"; tail -n 5 "$state/saliencyd.log"
exit "$rc"
