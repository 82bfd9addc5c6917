"""Population: `fhirsvc population` (the embedded engine) and `fhirsvc evaluate` over Bulk Data NDJSON in child
processes, against the orjson parse floor of the same files: patients/s and peak memory (VmHWM)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from bench.generate import AS_OF, SEED, population, write_ndjson

REPO = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000)
QUICK_SIZES = (100, 1_000)
BASELINE = 1  # one patient: the process's fixed cost (interpreter, imports, mappings)
FLOOR_RUNS = 3  # the parse floor is cheap (under a second at 10,000 patients): the median of three


@dataclass(frozen=True)
class ChildRun:
    """One child process: wall seconds and its peak RSS."""

    seconds: float
    peak_rss_kb: int


@dataclass(frozen=True)
class PopulationResult:
    patients: int
    resources: int
    ndjson_bytes: int
    engine: ChildRun  # `fhirsvc population DIR --out X.parquet` (the embedded engine)
    evaluate: ChildRun  # `fhirsvc evaluate DIR` (the JSON contract)
    floor_s: float  # orjson.loads of every line of the same files, in the benchmark process
    rows: int  # worklist rows written (checked against the summary the command prints)

    @property
    def seconds(self) -> float:
        return self.engine.seconds

    @property
    def peak_rss_kb(self) -> int:
        return self.engine.peak_rss_kb

    @property
    def patients_per_s(self) -> float:
        return self.patients / self.engine.seconds

    @property
    def evaluate_patients_per_s(self) -> float:
        return self.patients / self.evaluate.seconds

    @property
    def floor_ratio(self) -> float:
        return self.engine.seconds / self.floor_s

    def as_json(self) -> dict[str, Any]:
        return {
            "patients_per_s": round(self.patients_per_s, 1),
            "peak_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "seconds": round(self.seconds, 2),
            "floor_s": round(self.floor_s, 3),
            "floor_ratio": round(self.floor_ratio, 2),
            "rows": self.rows,
            "evaluate_patients_per_s": round(self.evaluate_patients_per_s, 1),
            "evaluate_seconds": round(self.evaluate.seconds, 2),
            "evaluate_peak_rss_mb": round(self.evaluate.peak_rss_kb / 1024, 1),
            "resources": self.resources,
            "ndjson_mb": round(self.ndjson_bytes / 1e6, 1),
        }


def _command() -> list[str]:
    script = Path(sys.executable).with_name("fhirsvc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fhirsvc.cli"]


def vm_hwm_kb(pid: int) -> int:
    """The process's peak RSS so far (VmHWM, KiB), 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_child(arguments: list[str], stdout: Path, timeout_s: float) -> ChildRun:
    """Run `fhirsvc ARGUMENTS` with stdout to a file; wall seconds and the child's peak RSS in KiB.

    The child imports fhirsvc from this checkout (PYTHONPATH), so that a baseline worktree run with another
    worktree's virtual environment measures its own code. The peak is VmHWM sampled every 10 ms: wait4's
    ru_maxrss would not do, because Linux carries the parent's peak over into a child it spawns (the benchmark
    process is larger than the command itself).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    stderr = stdout.with_suffix(".stderr.txt")
    peak = 0
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([*_command(), *arguments], stdout=out, stderr=err, env=env)  # noqa: S603
        deadline = started + timeout_s
        while proc.poll() is None:  # bounded: the child is killed at the deadline
            peak = max(peak, vm_hwm_kb(proc.pid))
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait(timeout=30)
                raise TimeoutError(f"fhirsvc {arguments[0]} took longer than {timeout_s:.0f} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"fhirsvc {arguments[0]} exited {proc.returncode}: {stderr.read_text()}")
    return ChildRun(seconds, peak)


def parse_floor(directory: Path) -> float:
    """Seconds to read and `orjson.loads` every line of every NDJSON file once (in this process, median of
    FLOOR_RUNS): what any reader of the export must spend, whatever it does with the resources."""
    files = sorted(directory.glob("*.ndjson"))
    samples = []
    for _ in range(FLOOR_RUNS):
        started = time.perf_counter()
        for path in files:
            with path.open("rb") as handle:
                for line in handle:
                    orjson.loads(line)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


_SUMMARY = re.compile(rb"^([\d,]+) patients, ([\d,]+) worklist rows", re.MULTILINE)


def _worklist_rows(summary: bytes, worklist: Path, patients: int) -> int:
    """The worklist's row count, checked against the summary `fhirsvc population` printed."""
    found = _SUMMARY.search(summary)
    if found is None:
        raise RuntimeError(f"fhirsvc population printed no summary: {summary[:200]!r}")
    said_patients, said_rows = (int(group.replace(b",", b"")) for group in found.groups())
    rows = pq.ParquetFile(worklist).metadata.num_rows
    if said_patients != patients or said_rows != rows:
        raise RuntimeError(f"summary says {said_patients} patients, {said_rows} rows; the worklist has {rows} rows")
    return rows


def measure_population(count: int, workdir: Path, seed: int = SEED, timeout_s: float = 1800) -> PopulationResult:
    directory = workdir / f"population-{count}"
    counts = write_ndjson(directory, population(count, seed))
    size = sum(p.stat().st_size for p in directory.iterdir())
    as_of = ["--as-of", AS_OF.isoformat()]
    worklist, summary = workdir / f"worklist-{count}.parquet", workdir / f"population-{count}.txt"
    engine = run_child(["population", str(directory), "--out", str(worklist), *as_of], summary, timeout_s)
    rows = _worklist_rows(summary.read_bytes(), worklist, count)
    output = workdir / f"evaluate-{count}.json"
    evaluate = run_child(["evaluate", str(directory), *as_of], output, timeout_s)
    items = orjson.loads(output.read_bytes())
    if len(items) != count:
        raise RuntimeError(f"fhirsvc evaluate returned {len(items)} results for {count} patients")
    for done in (output, worklist):
        done.unlink()
    return PopulationResult(count, sum(counts.values()), size, engine, evaluate, parse_floor(directory), rows)


def run(
    quick: bool = False, seed: int = SEED, progress: Callable[[str], None] = print
) -> tuple[PopulationResult, list[PopulationResult]]:
    """The one-patient baseline, then each population size (generation time is not measured)."""
    with tempfile.TemporaryDirectory(prefix="fhirsvc-bench-") as tmp:
        workdir = Path(tmp)
        baseline = measure_population(BASELINE, workdir, seed)
        results = []
        for count in QUICK_SIZES if quick else SIZES:
            progress(f"  population: generating {count:,} patients, then fhirsvc population, evaluate, the floor")
            results.append(measure_population(count, workdir, seed))
    return baseline, results
