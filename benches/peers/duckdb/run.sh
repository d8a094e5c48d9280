#!/usr/bin/env bash
# DuckDB against `cdrguard replay`: the same NDJSON files, the same three fraud rules
# (irsf_high_risk_destination, sms_sim_farm, simbox_behaviour), the same (rule, subscriber) pairs.
#
# usage: benches/peers/duckdb/run.sh [--usage U.ndjson --events E.ndjson | --stories] [--params P.toml]
#
# Without files, generates `cdrguard gen --subscribers 100000 --records 1000000 --days 1 --seed 1`
# into target/peers-data/ (once). `--stories` instead generates a smaller 4-day file with 5 injected
# stories per rule and also fails unless every rule has pairs (that traffic has few true positives:
# equal empty sets prove little). `--params` replaces the thresholds of both engines (e.g.
# benches/peers/duckdb/stress-params.toml, low enough that background traffic fires thousands of
# pairs). The binary is $CDRGUARD (default target/release/cdrguard).
# DuckDB 2.0.1 comes from pip, in a venv at target/peers-venv (created if missing), runs with one
# thread, and its time includes loading the JSON. Exits non-zero if the pair sets differ.
set -euo pipefail

usage_line="usage: benches/peers/duckdb/run.sh [--usage U.ndjson --events E.ndjson | --stories] [--params P.toml]"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"

cdrguard=${CDRGUARD:-target/release/cdrguard}
usage=""
events=""
stories=""
params=""
while [ $# -gt 0 ]; do
    case $1 in
        --usage) usage=${2:?$usage_line}; shift 2 ;;
        --events) events=${2:?$usage_line}; shift 2 ;;
        --stories) stories=1; shift ;;
        --params) params=${2:?$usage_line}; shift 2 ;;
        -h | --help) echo "$usage_line"; exit 0 ;;
        *) echo "$usage_line" >&2; exit 64 ;;
    esac
done
if { [ -n "$usage" ] && [ -z "$events" ]; } || { [ -z "$usage" ] && [ -n "$events" ]; }; then
    echo "give both --usage and --events, or neither" >&2
    echo "$usage_line" >&2
    exit 64
fi
[ -x "$cdrguard" ] || { echo "no cdrguard binary at $cdrguard (set CDRGUARD)" >&2; exit 1; }

ids="irsf_high_risk_destination sms_sim_farm simbox_behaviour"
require=()
if [ -n "$stories" ]; then
    [ -z "$usage" ] || { echo "$usage_line" >&2; exit 64; }
    data=target/peers-data
    usage=$data/stories-usage.ndjson
    events=$data/stories-events.ndjson
    if [ ! -s "$usage" ] || [ ! -s "$events" ]; then
        mkdir -p "$data"
        inject=()
        for id in $ids; do inject+=(--inject "$id=5"); done
        "$cdrguard" gen --subscribers 20000 --records 400000 --days 4 --seed 3 "${inject[@]}" \
            --usage "$usage" --events "$events" --labels "$data/stories-labels.json"
    fi
    read -r -a require <<<"--require-each $ids"
elif [ -z "$usage" ]; then
    data=target/peers-data
    usage=$data/usage.ndjson
    events=$data/events.ndjson
    if [ ! -s "$usage" ] || [ ! -s "$events" ]; then
        mkdir -p "$data"
        "$cdrguard" gen --subscribers 100000 --records 1000000 --days 1 --seed 1 \
            --usage "$usage" --events "$events"
    fi
fi

venv=target/peers-venv
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet duckdb==2.0.1
fi

# A rules folder with only the three rules, their params.toml tables (defaults and segment
# overrides) and the lists.
rules=target/peers-rules
rm -rf "$rules"
mkdir -p "$rules/fraud" "$rules/lists"
for id in $ids; do
    cp "rules/fraud/$id.rhai" "$rules/fraud/"
done
cp rules/lists/*.txt "$rules/lists/"
awk -v ids="$ids" '
    BEGIN { n = split(ids, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1; keep = 1 }
    /^\[/ {
        name = $0; sub(/^\[/, "", name); sub(/\].*$/, "", name)
        k = split(name, p, ".")
        keep = (name in want) || (k == 3 && p[1] == "segments" && (p[3] in want))
    }
    keep { print }' rules/params.toml >"$rules/params.toml"
if [ -n "$params" ]; then
    cp "$params" "$rules/params.toml"
fi

out=target/peers-out
mkdir -p "$out"

# Wall seconds and peak RSS (KiB) of one command, into file $1.
measure() {
    local into=$1
    shift
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%e %M' -o "$into" "$@"
    else
        python3 - "$into" "$@" <<'PY'
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(f"{time.perf_counter() - t:.2f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n")
sys.exit(rc)
PY
    fi
}

records=$(wc -l <"$usage")
echo "input: $usage ($records lines), $events"
echo "load: $(uptime)"
cat "$usage" "$events" >/dev/null # both engines start from a warm page cache

echo "== duckdb $("$venv/bin/python" -c 'import duckdb; print(duckdb.__version__)'), 1 thread"
measure "$out/duckdb.time" "$venv/bin/python" "$here/duck_rules.py" \
    --usage "$usage" --events "$events" --rules "$rules" --out "$out/duckdb-pairs.csv" --threads 1 \
    | tee "$out/duckdb.json"

echo "== cdrguard replay, 3 rules"
measure "$out/cdrguard.time" "$cdrguard" replay --usage "$usage" --events "$events" \
    --rules "$rules" --out "$out/cdrguard-alerts.ndjson" --quiet \
    --summary-json "$out/cdrguard-summary.json" >"$out/cdrguard.log" 2>&1 ||
    { cat "$out/cdrguard.log" >&2; exit 1; }
grep -E 'usage accepted|rejected|duplicates|elapsed|peak RSS' "$out/cdrguard.log" || true

read -r d_s d_kb <"$out/duckdb.time"
read -r c_s c_kb <"$out/cdrguard.time"
echo "== results (wall time of each process, usage records / s)"
awk -v n="$records" -v ds="$d_s" -v dk="$d_kb" -v cs="$c_s" -v ck="$c_kb" 'BEGIN {
    printf "  duckdb     %7.2f s  %9.0f records/s  peak RSS %6.0f MiB\n", ds, n / ds, dk / 1024
    printf "  cdrguard   %7.2f s  %9.0f records/s  peak RSS %6.0f MiB\n", cs, n / cs, ck / 1024
    printf "  ratio      %.2fx (cdrguard records/s / duckdb records/s)\n", ds / cs
}'
echo "== pairs"
"$venv/bin/python" "$here/check_pairs.py" "$out/cdrguard-alerts.ndjson" "$out/duckdb-pairs.csv" "${require[@]}"
