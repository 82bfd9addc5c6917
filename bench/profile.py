"""`python -m bench.profile [--size N]`: cProfile of the in-process pipeline on one generated record."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

from bench.generate import SEED, patient_record, request_body
from bench.inprocess import Pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--size", type=int, default=1_000, help="resources in the record (default 1,000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=30, help="functions to list")
    parser.add_argument("--sort", default="tottime", help="pstats sort key: tottime, cumulative, ncalls")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    body = request_body(patient_record(args.size, args.seed))
    pipeline = Pipeline()
    try:
        pipeline(body)  # warm-up: lazy imports and caches
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(max(1, min(args.repeats, 1000))):
            pipeline(body)
        profiler.disable()
    finally:
        pipeline.close()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
