"""Compare the (rule, subscriber) pairs of cdrguard's alerts with DuckDB's.

usage: check_pairs.py ALERTS.ndjson PAIRS.csv [--require-each RULE ...]

Prints the pair count per rule on each side; exits 1 with the difference if the sets differ,
2 if a rule named by --require-each has no pair (an equality of empty sets proves little).
"""

import argparse
import collections
import csv
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("alerts")
    ap.add_argument("pairs")
    ap.add_argument("--require-each", nargs="*", default=[])
    a = ap.parse_args()

    ours = set()
    with open(a.alerts) as f:
        for line in f:
            if line.strip():
                alert = json.loads(line)
                ours.add((alert["rule"]["id"], alert["entity"]["key"]))
    with open(a.pairs, newline="") as f:
        duck = {(row["rule"], row["subscriber"]) for row in csv.DictReader(f)}

    rules = sorted({r for r, _ in ours | duck} | set(a.require_each))
    count = collections.Counter
    c_ours, c_duck = count(r for r, _ in ours), count(r for r, _ in duck)
    for rule in rules:
        print(f"  {rule:<28} cdrguard {c_ours[rule]:>6}   duckdb {c_duck[rule]:>6}")
    if ours != duck:
        for rule, sub in sorted(ours - duck):
            print(f"  only cdrguard: {rule} {sub}")
        for rule, sub in sorted(duck - ours):
            print(f"  only duckdb:   {rule} {sub}")
        print(f"pairs differ: {len(ours - duck)} only in cdrguard, {len(duck - ours)} only in duckdb")
        sys.exit(1)
    print(f"pairs equal: {len(ours)}")
    missing = [r for r in a.require_each if c_ours[r] == 0]
    if missing:
        print(f"no pair for {', '.join(missing)}")
        sys.exit(2)


if __name__ == "__main__":
    main()
