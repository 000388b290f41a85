"""`python -m bench [--quick] [--only NAME]`: run the benchmarks and print one table."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

SCENARIOS = ["inbound"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--only", action="append", help="run only these scenarios")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in SCENARIOS:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        print(f"… {name}", file=sys.stderr, flush=True)
        rows.extend(module.run(args.quick))
        print(f"  {name} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    header = ("scenario", "measured", "reference (same run)", "target", "ok")
    table = [header] + [(r.scenario, r.measured, r.reference, r.target,
                         "—" if r.ok is None else ("yes" if r.ok else "NO")) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table[1:]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
