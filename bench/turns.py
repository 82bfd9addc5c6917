"""`python -m bench.turns OTHER [--rounds N]`: this checkout against another one (e.g. a worktree of an older commit),
measured in turns: how one change is measured when its effect is smaller than a shared machine's noise.

Each round runs both checkouts one after the other, alternating which goes first, each in its own child processes
(fhirsvc imported from that checkout through `PYTHONPATH`); medians over the rounds, then new/old. Measured:
`evaluate_record` and the whole in-process pipeline (`bench.inprocess.Pipeline`) at 10 and 100 resources (median
ms), `evaluate_record` over a 2,000-patient population read into memory first (s), and `fhirsvc population` and
`fhirsvc evaluate` on 10,000 patients: wall and CPU (user + system) seconds of the child.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.generate import AS_OF, SEED, population, write_ndjson

REPO = Path(__file__).resolve().parent.parent

# Run inside each checkout: only what both an old and a new checkout have (fhirsvc, bench.generate,
# bench.inprocess), so that the older commit needs no copy of this file.
IN_PROCESS = """
import json, statistics, sys, time
from pathlib import Path
import orjson
from bench.generate import SEED, patient_record, request_body
from bench.inprocess import Pipeline
from fhirsvc.cds.models import CdsRequest
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.record.gather import gather

def median_ms(func, calls):
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 4)

pipeline = Pipeline()
knowledge, as_of = pipeline.knowledge, pipeline.as_of
out = {}
for size, calls in ((10, 3000), (100, 600)):
    body = request_body(patient_record(size, SEED))
    request = CdsRequest.model_validate(orjson.loads(body))
    gathered = pipeline.loop.run_until_complete(gather(request.patient_id, request.prefetch, None, None, 10))
    record = gathered.record
    out[f"evaluate_record_{size}_ms"] = median_ms(lambda: evaluate_record(record, knowledge, as_of), calls)
    out[f"pipeline_{size}_ms"] = median_ms(lambda: pipeline(body), calls // 2)
records = list(index_records([Path(sys.argv[1])]).records())
every = median_ms(lambda: [evaluate_record(r, knowledge, as_of) for r in records], 5)
out["evaluate_record_2000_patients_s"] = round(every / 1000, 4)
pipeline.close()
print(json.dumps(out))
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def in_process(tree: Path, small: Path) -> dict[str, float]:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", IN_PROCESS, str(small)],
        cwd=tree,
        env=_env(tree),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures: dict[str, float] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return figures


def command(tree: Path, arguments: list[str], timeout_s: float = 600) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of `fhirsvc ARGUMENTS` run from `tree` (the CPU of the children this
    process waited for, before and after: one child at a time)."""
    script = Path(sys.executable).with_name("fhirsvc")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603
        [str(script), *arguments], cwd=tree, env=_env(tree), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise TimeoutError(f"fhirsvc {arguments[0]} took longer than {timeout_s:.0f} s") from None
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if returncode != 0:
        raise RuntimeError(f"fhirsvc {arguments[0]} exited {returncode} in {tree}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_round(tree: Path, small: Path, large: Path, workdir: Path) -> dict[str, float]:
    figures = in_process(tree, small)
    as_of = ["--as-of", AS_OF.isoformat()]
    worklist = workdir / "worklist.parquet"
    wall, cpu = command(tree, ["population", str(large), "--out", str(worklist), *as_of])
    figures |= {"population_10000_wall_s": round(wall, 3), "population_10000_cpu_s": round(cpu, 3)}
    wall, cpu = command(tree, ["evaluate", str(large), *as_of])
    figures |= {"evaluate_10000_wall_s": round(wall, 3), "evaluate_10000_cpu_s": round(cpu, 3)}
    return figures


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 4) for key in runs[0]}


def ratios(old: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    """new/old per figure (every figure is a time: below 1 is faster)."""
    return {key: round(new[key] / old[key], 3) for key in old if key in new and old[key]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("other", type=Path, help="the other checkout (old), e.g. a git worktree of the base commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    trees = {"old": args.other.resolve(), "new": REPO}
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    print(f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="fhirsvc-turns-") as tmp:
        workdir = Path(tmp)
        small, large = workdir / "population-2000", workdir / "population-10000"
        write_ndjson(small, population(2_000, args.seed))
        write_ndjson(large, population(10_000, args.seed))
        for number in range(max(1, min(args.rounds, 20))):
            order = ["old", "new"] if number % 2 == 0 else ["new", "old"]
            for name in order:
                runs[name].append(one_round(trees[name], small, large, workdir))
    old, new = medians(runs["old"]), medians(runs["new"])
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"  {'figure':34} {'old':>10} {'new':>10} {'new/old':>8}")
    for key, ratio in ratios(old, new).items():
        print(f"  {key:34} {old[key]:>10} {new[key]:>10} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
