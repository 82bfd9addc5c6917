"""`python -m bench [--quick] [--json PATH]`: run the benchmarks, print tables and targets, write medians."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench import hostile, inprocess, load, population, report, spark
from bench.generate import SEED

SECTIONS = ("inprocess", "load", "population", "hostile", "spark")
# hostile: on request (`--only hostile`), it only guards; spark: on request, it takes about 10 minutes (--quick: 1)
DEFAULT_SECTIONS = ("inprocess", "load", "population")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 2 s load runs, 100/1,000 patients")
    parser.add_argument("--json", type=Path, help="write the figures (medians) to this file")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    figures: dict[str, Any] = {"machine": report.machine(), "quick": args.quick, "seed": args.seed}
    targets: list[report.Target] = []
    started = time.perf_counter()
    print(f"fhirsvc benchmarks{' (quick)' if args.quick else ''} on {_describe(figures['machine'])}\n")

    if "inprocess" in wanted:
        _say("in-process evaluation ...")
        sizes = inprocess.run(quick=args.quick, seed=args.seed, progress=_say)
        figures["in_process"] = {str(r.size): r.as_json() for r in sizes}
        print("In-process: CDS Hooks request body bytes -> cards (medians)")
        print(report.in_process_table(sizes) + "\n")
        targets += report.in_process_targets(sizes)

    if "load" in wanted:
        _say("service under load ...")
        loaded = load.run(quick=args.quick, seed=args.seed, progress=_say)
        figures["load"] = loaded.as_json()
        print(
            f"Service under load: POST {load.SERVICE}, full prefetch of {load.RESOURCES} resources "
            f"({loaded.body_bytes / 1024:,.0f} KB); in-process {loaded.in_process_ms:.1f} ms per call"
        )
        print(report.load_table(loaded) + "\n")
        targets += report.load_targets(loaded)

    if "population" in wanted:
        _say("population ...")
        baseline, results = population.run(quick=args.quick, seed=args.seed, progress=_say)
        figures["population"] = {str(r.patients): r.as_json() for r in [baseline, *results]}
        print(
            "Population: fhirsvc population and evaluate on Bulk Data NDJSON (child processes; first row: one patient)"
        )
        print(report.population_table(baseline, results) + "\n")
        targets += report.population_targets(results)

    if "hostile" in wanted:
        _say("hostile bodies ...")
        attacked = hostile.run(quick=args.quick, seed=args.seed, progress=_say)
        figures["hostile"] = attacked.as_json()
        print("Hostile bodies against the served app (1 MB texts, 64 KiB texts, deep nesting, 100,000 tiny resources)")
        print(hostile.table(attacked) + "\n")

    if "spark" in wanted:
        _say("population on Spark ...")
        on_spark = spark.run(quick=args.quick, seed=args.seed, progress=_say)
        figures["spark"] = {str(r.patients): r.as_json() for r in on_spark}
        print("Population on Spark: fhirsvc population, embedded and --engine spark (child processes; net/s: from the")
        print("Spark session's start on; floor x: the orjson parse floor's patients/s over net/s)")
        print(spark.table(on_spark) + "\n")

    figures["targets"] = [t.as_json() for t in targets]
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print("Targets")
    print("\n".join(t.line() for t in targets) or "  (none for the sections run)")
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
        _say(f"figures written to {args.json}")
    return 0


def _describe(info: dict[str, Any]) -> str:
    return (
        f"{info['nproc']} x {info['cpu']}, Python {info['python']}, load average {info['loadavg_1m']}, "
        f"commit {info['commit']}"
    )


if __name__ == "__main__":
    sys.exit(main())
