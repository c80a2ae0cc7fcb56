"""Fuzz every parser of outside input for a given count or time (issue 11).

    .venv/bin/python bench/bench_fuzz.py                    # 100,000 inputs per parser
    .venv/bin/python bench/bench_fuzz.py --seconds 60       # a minute per parser
    .venv/bin/python bench/bench_fuzz.py --targets config,frames --count 500000

Targets (``tests/fuzz_support.py``): ``config`` (TOML → validated config and
runtime tables), ``frames`` (msgpack frames), ``image_index`` (image header,
index, strtab), ``http_head`` (h11 + the ingress's header rules),
``worker_json`` (the worker's JSON event decoding). Prints, per target, the
inputs tried, crashes (an exception other than the parser's typed errors),
time and rate, then the first crashes with their input. Exit status 1 if any
target crashed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fuzz_support import fuzz, targets  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seconds", type=float, help="time per target instead of a count")
    parser.add_argument("--targets", help="comma-separated subset (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    available = targets()
    names = args.targets.split(",") if args.targets else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(available)}")
    print(f"{'target':<12} {'inputs':>9} {'crashes':>8} {'seconds':>8} {'inputs/s':>9}")
    failed = []
    for name in names:
        if args.seconds is not None:
            report = fuzz(available[name], seconds=args.seconds, seed=args.seed)
        else:
            report = fuzz(available[name], count=args.count, seed=args.seed)
        rate = report.inputs / report.seconds if report.seconds else 0.0
        print(
            f"{name:<12} {report.inputs:>9} {report.crash_count:>8} "
            f"{report.seconds:>8.1f} {rate:>9.0f}",
            flush=True,
        )
        if report.crashes:
            failed.append(report)
    for report in failed:
        kinds = sorted({c.error.split(":")[0] for c in report.crashes})
        print(f"\n{report.target}: {report.crash_count} crashes ({', '.join(kinds)})")
        for crash in report.crashes[:3]:
            if crash.data:
                print(f"  {crash.error}\n    input[:160] = {crash.data[:160]!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
