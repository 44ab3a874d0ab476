#!/usr/bin/env bash
# The main job: build saliencyd, start it on its embedded defaults, replay the bundled recorded
# feed of a real CNN (Fashion-MNIST; calibration → clean traffic → a domain shift: inverted
# images), and show alerts and the top salient filters as they happen; then stop it cleanly and
# say in plain words what the daemon found (computed from its own replies).
#
#   scripts/demo.sh            (SPEED=… multiplies the replay rate; KEEP_STATE=1 keeps the state dir;
#                               BIN_DIR=dir uses saliencyd and saliencyctl from dir instead of building)
set -euo pipefail
cd "$(dirname "$0")/.."
feed=data/feeds/fmnist
speed=${SPEED:-1}

# 1. The daemon's default ports must be free: otherwise saliencyctl would talk to whatever holds
#    them (another saliencyd, with other models) and the demo would make no sense.
busy=0
for port in 5560 5561 5562 9464; do
    holder=
    if command -v ss >/dev/null 2>&1; then
        line=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1 || true)
        [ -n "$line" ] || continue
        holder=$(printf '%s\n' "$line" | grep -o 'users:(("[^"]*",pid=[0-9]*' | sed 's/users:(("\([^"]*\)",pid=\([0-9]*\)/\1 (pid \2)/' || true)
        [ -n "$holder" ] || holder="another process (run as root, or 'sudo ss -ltnp', to see which)"
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        holder="another process"
    else
        continue
    fi
    echo "demo: port $port is already in use by $holder; the demo needs 5560, 5561, 5562 and 9464 free." >&2
    busy=1
done
if [ "$busy" = 1 ]; then
    echo "demo: stop that process (for a saliencyd: systemctl stop saliencyd, or kill its pid) and run the demo again." >&2
    exit 1
fi

if [ -n "${BIN_DIR:-}" ]; then
    bin=$(cd "$BIN_DIR" && pwd)
else
    if ! pkg-config --exists libzmq 2>/dev/null; then
        echo "==> installing libzmq3-dev"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq libzmq3-dev pkg-config >/dev/null
    fi
    echo "==> building (release; the first build takes a few minutes)"
    swift build -c release 2>&1 | grep -E "error|warning: unre|Compiling saliency|Build" || true
    bin=$(swift build -c release --show-bin-path)
fi
ctl="$bin/saliencyctl"
[ -x "$ctl" ] && [ -x "$bin/saliencyd" ] || { echo "demo: the build did not produce $bin/saliencyd and saliencyctl (see the errors above)" >&2; exit 1; }

state=$(mktemp -d /tmp/saliencyd-demo.XXXXXX)
daemon= follower=
stop_pid() {   # stop a process we started, if it is still running; never complains
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$follower"
    stop_pid "$daemon"
    [ -n "${KEEP_STATE:-}" ] || rm -rf "$state"
}
trap cleanup EXIT

echo "==> starting saliencyd with its defaults (feed tcp://127.0.0.1:5560, alerts :5561, queries :5562, metrics :9464); state in $state"
"$bin/saliencyd" --state-dir "$state" 2> "$state/saliencyd.log" &
daemon=$!
up=0
for _ in $(seq 100); do
    kill -0 "$daemon" 2>/dev/null || break
    "$ctl" status --timeout 0.2 >/dev/null 2>&1 && { up=1; break; }
    sleep 0.1
done
if [ "$up" != 1 ]; then
    echo "demo: saliencyd did not start; its log:" >&2
    tail -n 20 "$state/saliencyd.log" >&2
    exit 1
fi

"$ctl" alerts --follow &
follower=$!

now() { date +%s.%N; }
rate() { awk -v r="$1" -v s="$speed" 'BEGIN { print r * s }'; }
shift_rate=$(rate 100)
echo; echo "==> 1/3 calibration: 1000 reference predictions (clean test images, true labels)"
"$ctl" replay "$feed/reference.npy" --schema "$feed/reference.schema.json" --rate "$(rate 2000)" --producer-id 1
sleep 1
"$ctl" status
echo; echo "==> 2/3 clean traffic: 300 predictions — expect no alerts (false-alarm budget: 1 per 10^6 predictions)"
"$ctl" replay "$feed/clean.npy" --schema "$feed/clean.schema.json" --rate "$shift_rate" --producer-id 2
sleep 1
"$ctl" alerts --json > "$state/alerts-clean.jsonl"
"$ctl" status --json > "$state/status-clean.json"
cat <<'EOF'

How to read the `top` tables below: each row is one convolution filter of the model.
  rank     1 = the most unusual filter right now
  filter   its number in the model (all layers counted together); layer, channel: where it sits
  score    how rare its saliency is: with --by pot, -log10 of the probability of a value this large
           under the filter's own fitted tail (4 = once in 10,000 predictions; inf = beyond anything
           seen); with --by zscore, standard deviations above its mean (no tail model)
  p        that probability (pot only); averaged here over the last 32 predictions (--window 32)
EOF
"$ctl" top --model fmnist-cnn -k 10 --window 32
echo; echo "==> 3/3 domain shift: 300 inverted images — alerts fire on the filters that turn extreme"
onset=$(now)
"$ctl" replay "$feed/shifted.npy" --schema "$feed/shifted.schema.json" --rate "$shift_rate" --producer-id 3
sleep 1.5
echo; echo "==> top filters over the last 32 shifted predictions, POT (tail probability) vs z-score"
"$ctl" top --model fmnist-cnn -k 10 --window 32 --by pot
"$ctl" top --model fmnist-cnn -k 10 --window 32 --by zscore
echo; echo "==> firing alerts per layer"
"$ctl" alerts --summary
"$ctl" alerts --json > "$state/alerts-all.jsonl"
"$ctl" status --json > "$state/status-end.json"
"$ctl" top --model fmnist-cnn -k 10 --window 32 --json > "$state/top-end.jsonl"
echo; "$ctl" status
echo; echo "==> stopping saliencyd (SIGTERM: state is written, exit 0)"
stop_pid "$follower"; follower=
kill -TERM "$daemon" 2>/dev/null || true
rc=0; wait "$daemon" || rc=$?
daemon=
echo "saliencyd exited with status $rc; its log:"; tail -n 5 "$state/saliencyd.log"

echo; echo "==> verdict (from the daemon's own replies: alerts --json, status --json, top --json)"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$state" "$onset" "$shift_rate" <<'EOF' || echo "(could not compute the verdict; run with KEEP_STATE=1 to keep the replies in $state)"
import json, sys
from collections import Counter
from datetime import datetime
state, onset, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def lines(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]
def when(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
clean = [a for a in lines(f"{state}/alerts-clean.jsonl") if a["status"] == "firing"]
seen_before = max((a["seq"] for a in lines(f"{state}/alerts-clean.jsonl")), default=0)
after = [a for a in lines(f"{state}/alerts-all.jsonl") if a["status"] == "firing" and a["seq"] > seen_before]
status = json.load(open(f"{state}/status-end.json"))
models = {m["model"]: m for m in status["models"]}
filters = [a for a in after if a.get("filter") is not None]
model_level = [a for a in after if a.get("filter") is None]
if not after:
    print("No alert fired after the shift began: the daemon did not detect the inverted images.")
else:
    model = Counter(a["model"] for a in after).most_common(1)[0][0]
    m = models.get(model, {})
    distinct = {(a["layer"], a["filter"]) for a in filters}          # a filter that fired twice counts once
    layers = Counter(layer for layer, _ in distinct)
    first = min(after, key=lambda a: when(a["startsAt"]))
    secs = max(0.0, when(first["startsAt"]) - onset)
    rows = min(300, round(secs * rate))
    top = lines(f"{state}/top-end.jsonl")
    top_layers = Counter(e["layer"] for e in top)
    print(f"What shifted: model '{model}' ({m.get('filters', '?')} filters, {m.get('rows', '?')} predictions seen, phase {m.get('phase', '?')}).")
    print(f"How many filters fired: {len(distinct)} of {m.get('filters', '?')}" + (f", plus a model-level shift alert" if model_level else "") + ".")
    print("Which layers: " + ", ".join(f"{l} ({n} filter{'s' if n != 1 else ''})" for l, n in layers.most_common()) + "."
          if layers else "Which layers: none individually (only the model-level alert).")
    print("Most salient now (top 10 over the last 32 predictions): " + ", ".join(f"{l} x{n}" for l, n in top_layers.most_common()) + ".")
    print(f"How soon: the first alert ({first['layer']}" + (f"[{first.get('channel')}]" if first.get("filter") is not None else "") +
          f") came {secs:.2f} s after the shift began, about {rows} of the 300 shifted predictions in (replayed at {rate:g} per second).")
    print(f"Still firing when the demo ended: {status.get('firing', '?')} alert(s).")
print("Clean traffic: " + ("no alert fired on the 1,000 calibration and 300 clean predictions." if not clean else
      f"{len(clean)} alert(s) fired before the shift ({', '.join(sorted({a['layer'] for a in clean}))}): false alarms."))
EOF
else
    echo "(python3 is needed to summarize the replies; the table above shows the alerts)"
fi
echo
echo "saliencyctl is at $ctl; to use it from any directory:"
echo "    export PATH=\"$bin:\$PATH\"        # this shell only"
echo "    sudo systemd/install.sh              # or install both binaries, completions and man pages under /usr/local"
exit "$rc"
