"""`python -m bench [--quick] [--only NAME]`: run the benchmarks and print one table.

Each scenario is a module of this package with `run(quick: bool) -> list[Result]`; one that fails or
cannot run (no PostgreSQL, a missing package) prints a row saying why, and the others go on."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone

from bench.common import Result

SCENARIOS = ["inbound", "broadcast", "fanout", "reminders", "memory", "console"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    rows: list[Result] = []
    began = time.perf_counter()
    for name in SCENARIOS:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"… {name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            rows.extend(module.run(args.quick))
        except Exception as exc:  # noqa: BLE001  (one scenario's failure is a row, not the end of the table)
            traceback.print_exc(file=sys.stderr)
            rows.append(Result(name, f"failed: {type(exc).__name__}: {exc}"[:200], "—", "—", None))
        print(f"  {name} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    header = ("scenario", "measured", "reference (same run)", "target", "ok")
    table = [header] + [(r.scenario, r.measured, r.reference, r.target,
                         "—" if r.ok is None else ("yes" if r.ok else "NO")) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print(f"`python -m bench{' --quick' if args.quick else ''}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.perf_counter() - began:.0f} s")
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table[1:]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
