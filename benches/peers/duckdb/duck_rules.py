"""Run rules.sql in DuckDB: the three fraud rules as per-event trailing windows.

usage: duck_rules.py --usage U.ndjson --events E.ndjson --rules DIR --out pairs.csv [--threads 1]

Thresholds come from DIR/params.toml (defaults and segment overrides), prefixes from DIR/lists/.
Prints one JSON line: seconds from connecting to the pairs file written (JSON load included),
usage records, records/s, pairs per rule. Exits 3 if the usage file is not in event-time order
(checked after the timing: the SQL relies on it, as cdrguard's merge of the two files does).
"""

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from string import Template

import duckdb

SEGMENTS = ["consumer", "smb", "enterprise", "vip", "government", "m2m", "test"]
# (rule id, parameter, column of the params table)
PARAMS = [
    ("irsf_high_risk_destination", "min_calls", "irsf_min_calls"),
    ("irsf_high_risk_destination", "min_minutes", "irsf_min_minutes"),
    ("sms_sim_farm", "min_per_hour", "sms_min_per_hour"),
    ("sms_sim_farm", "min_per_day", "sms_min_per_day"),
    ("sms_sim_farm", "min_distinct_share", "sms_min_distinct_share"),
    ("simbox_behaviour", "min_mo_calls", "sb_min_mo_calls"),
    ("simbox_behaviour", "min_distinct_called", "sb_min_distinct_called"),
    ("simbox_behaviour", "min_mo_mt_ratio", "sb_min_mo_mt_ratio"),
    ("simbox_behaviour", "max_cells", "sb_max_cells"),
]
FLOATS = {"min_minutes", "min_distinct_share", "min_mo_mt_ratio"}


def params_rows(path):
    """One VALUES row per segment: the defaults with that segment's overrides."""
    toml = tomllib.loads(path.read_text())
    overrides = toml.get("segments", {})
    rows = []
    for seg in SEGMENTS:
        vals = [f"'{seg}'"]
        for rule, key, _ in PARAMS:
            v = overrides.get(seg, {}).get(rule, {}).get(key, toml[rule][key])
            # params.toml reads an integer as a float where the rule declares a float
            vals.append(repr(float(v)) if key in FLOATS else str(int(v)))
        rows.append("(" + ", ".join(vals) + ")")
    return ", ".join(rows)


def prefix_case(path, column):
    """`listed` / the high_risk class as SQL: the longest listed prefix decides, `!` exempts."""
    entries = {}
    for line in path.read_text().splitlines():
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        listed = not body.startswith("!")
        digits = body.lstrip("!").strip()
        if not digits.isdigit():
            sys.exit(f"{path}: {digits!r} is not a prefix")
        entries[digits] = listed
    if not entries:
        return "false"
    arms = " ".join(
        f"WHEN starts_with({column}, '{p}') THEN {'true' if entries[p] else 'false'}"
        for p in sorted(entries, key=len, reverse=True)
    )
    return f"(CASE {arms} ELSE false END)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--usage", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    rules = Path(a.rules)
    sql = Template((Path(__file__).parent / "rules.sql").read_text()).substitute(
        threads=a.threads,
        usage=a.usage.replace("'", "''"),
        events=a.events.replace("'", "''"),
        out=a.out.replace("'", "''"),
        params_rows=params_rows(rules / "params.toml"),
        high_risk_dest=prefix_case(rules / "lists" / "high_risk_prefixes.txt", "dest"),
        sms_whitelisted=prefix_case(rules / "lists" / "sms_whitelist.txt", "e.sub"),
        simbox_whitelisted=prefix_case(rules / "lists" / "simbox_whitelist.txt", "e.sub"),
    )

    start = time.perf_counter()
    con = duckdb.connect()
    con.execute(sql)
    seconds = time.perf_counter() - start

    records = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    per_rule = dict(con.execute("SELECT rule, count(*) FROM pairs GROUP BY rule").fetchall())
    disorder = con.execute(
        "SELECT count(*) FROM (SELECT t < lag(t) OVER (ORDER BY seq) AS back FROM r) WHERE back"
    ).fetchone()[0]
    print(json.dumps({"seconds": round(seconds, 3), "records": records,
                      "records_per_s": round(records / seconds), "pairs": per_rule}))
    if disorder:
        print(f"usage file has {disorder} records earlier than the one before: "
              "the SQL assumes event-time order", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
