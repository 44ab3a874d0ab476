#!/bin/sh
# CI check of the systemd packaging (builds nothing; needs systemd-analyze, systemd ≥ 252).
#
#   Tests/System/check_systemd.sh [EXECUTABLE]
#
# 1. systemd/saliencyd.service, with ExecStart= pointed at EXECUTABLE (an existing executable,
#    default /bin/true) in a temporary copy:
#    - `systemd-analyze verify --man=no` must succeed and print nothing (typos only warn, rc 0);
#    - `systemd-analyze security --offline=yes` exposure must be ≤ 2.0 (the score is printed).
# 2. systemd/saliencyd.toml against Sources/Monitor/DaemonConfiguration.swift:
#    - every section and key of `knownKeys` is set in the example, in its section;
#    - the example sets no key that `knownKeys` does not know (the daemon would refuse it);
#    - with python3 ≥ 3.11 (tomllib): the file parses, and each value equals the Swift default
#      where the default is a plain literal in the source (others are reported as skipped).
set -eu

MAX_EXPOSURE=20       # systemd-analyze --threshold is on a 0-100 scale: 20 = exposure 2.0
root=$(cd "$(dirname "$0")/../.." && pwd)
unit="$root/systemd/saliencyd.service"
toml="$root/systemd/saliencyd.toml"
swift="$root/Sources/Monitor/DaemonConfiguration.swift"
exe=${1:-/bin/true}
fail=0

case $exe in /*) ;; *) exe="$PWD/$exe" ;; esac
[ -f "$exe" ] && [ -x "$exe" ] || { echo "FAIL: '$exe' is not an existing executable" >&2; exit 2; }
command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze not found (Debian package 'systemd')" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# ---- 1. the unit --------------------------------------------------------------------------
# The unit name comes from the file name: keep it saliencyd.service.
sed "s#^ExecStart=[^ ]*#ExecStart=$exe#" "$unit" > "$tmp/saliencyd.service"
grep -q "^ExecStart=$exe " "$tmp/saliencyd.service" || { echo "FAIL: no 'ExecStart=/path args' line to substitute in $unit" >&2; exit 1; }

echo "== systemd-analyze verify --man=no (must print nothing)"
if out=$(systemd-analyze verify --man=no "$tmp/saliencyd.service" 2>&1); then
    if [ -n "$out" ]; then echo "$out"; echo "FAIL: verify printed the above"; fail=1; else echo "ok: verify printed nothing"; fi
else
    echo "$out"; echo "FAIL: verify exited non-zero"; fail=1
fi

echo "== systemd-analyze security --offline=yes (exposure must be ≤ 2.0)"
sec=$(systemd-analyze security --offline=yes --no-pager "$tmp/saliencyd.service" 2>&1) || true
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for saliencyd\.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
    printf '%s\n' "$sec"; echo "FAIL: no exposure score in the output above"; fail=1
else
    printf '%s\n' "$sec" | grep '✗' || true
    echo "exposure: $score"
    # Compare in tenths (the score has one decimal): 2.0 → 20.
    tenths=$(printf '%s' "$score" | awk '{ printf "%d", $1 * 10 + 0.5 }')
    if [ "$tenths" -gt "$MAX_EXPOSURE" ]; then echo "FAIL: exposure $score > 2.0"; fail=1; else echo "ok: exposure $score ≤ 2.0"; fi
    # Cross-check with systemd's own threshold logic (rc ≠ 0 when the score exceeds it).
    if ! systemd-analyze security --offline=yes --threshold=$MAX_EXPOSURE --no-pager "$tmp/saliencyd.service" >/dev/null 2>&1; then
        echo "FAIL: systemd-analyze security --threshold=$MAX_EXPOSURE failed"; fail=1
    fi
fi

# ---- 2. the example configuration ---------------------------------------------------------
echo "== saliencyd.toml against knownKeys in $(basename "$swift")"
# knownKeys lines look like:   "feed": ["endpoint", "bind", ...],
known=$(sed -n '/static let knownKeys/,/^    \]/p' "$swift" | grep -E '^[[:space:]]*"[a-z_]+": \[' \
        | sed -E 's/^[[:space:]]*"([a-z_]+)": \[(.*)\],?[[:space:]]*$/\1 \2/' | tr -d '",')
[ -n "$known" ] || { echo "FAIL: could not read knownKeys from $swift"; exit 1; }

# "section key" for every key = value line of the example (comments and blank lines skipped).
awk '
    /^[[:space:]]*#/ || /^[[:space:]]*$/ { next }
    /^[[:space:]]*\[[a-z_]+\][[:space:]]*(#.*)?$/ { s = $0; gsub(/[][[:space:]]|#.*/, "", s); print s " [section]"; next }
    /^[[:space:]]*[a-z_]+[[:space:]]*=/ { k = $0; sub(/^[[:space:]]*/, "", k); sub(/[[:space:]]*=.*/, "", k); print s " " k; next }
    { print "?? " $0 }
' "$toml" > "$tmp/example"

nkeys=0
while read -r section keys; do
    grep -qx "$section \[section\]" "$tmp/example" || { echo "FAIL: section [$section] missing from saliencyd.toml"; fail=1; }
    for k in $keys; do
        nkeys=$((nkeys + 1))
        grep -qx "$section $k" "$tmp/example" || { echo "FAIL: $section.$k missing from saliencyd.toml (set it to its default, with a comment)"; fail=1; }
    done
done <<EOF
$known
EOF
while read -r section k; do
    [ "$k" = "[section]" ] && continue
    if [ "$section" = "??" ]; then echo "FAIL: saliencyd.toml: unparsed line: $k"; fail=1; continue; fi
    printf '%s\n' "$known" | grep -Eq "^$section( | .* )$k( |\$)" || { echo "FAIL: saliencyd.toml sets $section.$k, which knownKeys does not know"; fail=1; }
done < "$tmp/example"
echo "checked $nkeys keys in $(printf '%s\n' "$known" | wc -l) sections"

if command -v python3 >/dev/null && python3 -c 'import tomllib' 2>/dev/null; then
    python3 - "$toml" "$root/Sources" "$swift" <<'PY' || fail=1
import glob, re, sys, tomllib
toml_path, sources, conf_swift = sys.argv[1:]
try:
    example = tomllib.load(open(toml_path, "rb"))
except Exception as e:
    print(f"FAIL: saliencyd.toml does not parse: {e}"); sys.exit(1)
swift = open(conf_swift).read()
everything = "\n".join(open(p).read() for p in glob.glob(f"{sources}/**/*.swift", recursive=True))
# section -> Swift type holding its values, from `public var <section> = <Type>()`.
types = dict(re.findall(r"public var (\w+) = (\w+)\(\)", swift))
# (section, key) -> property, from `if let v = str("feed", "endpoint") { c.feed.endpoint = v }`.
props = re.findall(r'if let v = \w+\("(\w+)", "(\w+)"\) \{ c\.\w+\.(\w+) = v \}', swift)

def body(type_name):
    # The configuration's own nested types first (other files may reuse a name, e.g. Limits).
    for text in (swift, everything):
        m = re.search(r"\bstruct " + type_name + r"\b[^{]*\{", text)
        if not m: continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0); i += 1
        return text[m.end():i]
    return None

def literal(text):
    text = text.strip().replace("_", "")
    if text in ("true", "false"): return text == "true"
    if re.fullmatch(r'"[^"\\]*"', text): return text[1:-1]
    if re.fullmatch(r"[0-9.eE+\-<> ]+", text):
        try: return eval(text, {"__builtins__": {}})   # digits, exponent, << only
        except Exception: return None
    return None

bad = checked = 0; skipped = []
for section, key, prop in props:
    b = body(types.get(section, "?"))
    src = None
    if b is not None:
        # `var prop = lit` / `var prop: T = lit` in the struct, else the init default `prop: T = lit`.
        m = re.search(r"\bvar " + prop + r"\b(?:\s*:\s*\w+)?\s*=\s*([^\n]+)", b) \
            or re.search(r"\b" + prop + r"\s*:\s*\w+\s*=\s*([^,)\n]+)", b)
        src = m and re.sub(r"\s//.*$", "", m.group(1))
    want = literal(src) if src else None
    if want is None:
        skipped.append(f"{section}.{key}"); continue
    got = example.get(section, {}).get(key)
    checked += 1
    if type(want) is bool or type(got) is bool:
        same = got is want
    elif isinstance(want, str) or isinstance(got, str):
        same = got == want
    else:
        same = got is not None and abs(float(got) - float(want)) <= 1e-12 * max(1.0, abs(float(want)))
    if not same:
        bad += 1; print(f"FAIL: saliencyd.toml {section}.{key} = {got!r}, but the default in the source is {src.strip()}")
print(f"defaults: {checked} compared with the Swift source" + (f", skipped (not a literal or not in this tree): {', '.join(skipped)}" if skipped else ""))
sys.exit(1 if bad else 0)
PY
else
    echo "note: python3 with tomllib (≥ 3.11) not found; TOML syntax and default values not checked"
fi

if [ "$fail" -ne 0 ]; then echo "check_systemd: FAILED"; exit 1; fi
echo "check_systemd: OK"
