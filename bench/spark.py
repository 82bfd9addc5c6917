"""Population on Spark: `fhirsvc population` with Spark on 1 and 2 executor cores, the embedded engine and the
orjson parse floor on the same Bulk Data NDJSON, with peak memory per executor (JVM + its Python workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.generate import AS_OF, SEED, population, write_ndjson
from bench.population import vm_hwm_kb
from bench.report import _table

SIZES = (10_000, 100_000)
QUICK_SIZES = (1_000,)
MASTERS = ("local[1]", "local[2]")
# The Spark engine prints this once its session has started and the files are listed: the run from there on is
# what a longer run would scale (JVM and SparkSession start, about 5-8 s here, are paid once per run).
STARTED = "reading "
SAMPLE_S = 0.05  # VmHWM is a peak: sampling only has to see each process alive once it has grown


@dataclass(frozen=True)
class EngineRun:
    """One `fhirsvc population` run: wall seconds, and peak memory (KiB) of the process tree's parts."""

    engine: str  # "embedded" or the Spark master
    patients: int
    rows: int
    seconds: float
    started_s: float  # when the engine started reading (Spark: after its session started; embedded: at once)
    executor_kb: int  # Spark: the JVM (local: driver and executor in one) plus its Python workers; embedded: 0
    driver_kb: int  # the `fhirsvc` Python process itself
    python_workers: int
    loadavg_1m: float

    @property
    def patients_per_s(self) -> float:
        return self.patients / self.seconds

    @property
    def net_per_s(self) -> float:
        """Patients/s once started (Spark: without the JVM and SparkSession start)."""
        return self.patients / max(self.seconds - self.started_s, 1e-9)

    def as_json(self) -> dict[str, Any]:
        return {
            "patients_per_s": round(self.patients_per_s, 1),
            "net_patients_per_s": round(self.net_per_s, 1),
            "seconds": round(self.seconds, 2),
            "start_s": round(self.started_s, 2),
            "rows": self.rows,
            "executor_peak_mb": round(self.executor_kb / 1024, 1),
            "driver_peak_mb": round(self.driver_kb / 1024, 1),
            "python_workers": self.python_workers,
            "loadavg_1m": self.loadavg_1m,
        }


@dataclass
class SparkResult:
    """One population size: the orjson floor and every engine's run."""

    patients: int
    resources: int
    ndjson_bytes: int
    floor_s: float
    runs: list[EngineRun] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "resources": self.resources,
            "ndjson_mb": round(self.ndjson_bytes / 1e6, 1),
            "orjson_floor_s": round(self.floor_s, 2),
            "orjson_floor_patients_per_s": round(self.patients / self.floor_s, 1),
            "runs": {run.engine: run.as_json() for run in self.runs},
        }


def orjson_floor(directory: Path) -> float:
    """Seconds to read every line of every file and orjson.loads it: what no engine can beat on one core."""
    started = time.perf_counter()
    for path in sorted(directory.iterdir()):
        with path.open("rb") as handle:
            for line in handle:
                orjson.loads(line)
    return time.perf_counter() - started


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                parent = int(stat.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def _descendants(root: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], list(tree.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


@dataclass
class _Peaks:
    """The highest VmHWM seen per process of the tree (a process's peak survives only as long as it does)."""

    driver_kb: int = 0
    jvm_kb: dict[int, int] = field(default_factory=dict)
    workers_kb: dict[int, int] = field(default_factory=dict)

    def sample(self, root: int) -> None:
        self.driver_kb = max(self.driver_kb, vm_hwm_kb(root))
        for pid in _descendants(root, _children()):
            name = _comm(pid)
            into = self.jvm_kb if name == "java" else self.workers_kb if name.startswith("python") else None
            if into is not None:
                into[pid] = max(into.get(pid, 0), vm_hwm_kb(pid))


def _command() -> list[str]:
    script = Path(sys.executable).with_name("fhirsvc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fhirsvc.cli"]


def run_engine(engine: str, source: Path, workdir: Path, patients: int, timeout_s: float) -> EngineRun:
    """`fhirsvc population` in a child process (its own process group, killed at the deadline)."""
    out = workdir / f"worklist-{engine.replace('[', '').replace(']', '')}-{patients}"
    command = [*_command(), "population", str(source), "--out", str(out), "--as-of", AS_OF.isoformat()]
    if engine != "embedded":
        command += ["--engine", "spark", "--master", engine]
        out.mkdir(exist_ok=True)  # an empty directory: the Spark engine may replace it
    peaks = _Peaks()
    log = workdir / "population.log"
    with log.open("wb") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
        deadline = started + timeout_s
        started_s = 0.0 if engine == "embedded" else None
        while proc.poll() is None:  # bounded: the whole group is killed at the deadline
            peaks.sample(proc.pid)
            if started_s is None and STARTED in log.read_text(errors="replace"):
                started_s = time.perf_counter() - started
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                raise TimeoutError(f"fhirsvc population ({engine}) took longer than {timeout_s:.0f} s")
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - started
    output = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"fhirsvc population ({engine}) exited {proc.returncode}: {output[-2000:]}")
    summary = next(line for line in output.splitlines() if " worklist rows " in line)
    seen, rows = (int(part.split()[0].replace(",", "")) for part in summary.split(", ")[:2])
    if seen != patients:
        raise RuntimeError(f"fhirsvc population ({engine}) saw {seen} patients of {patients}")
    return EngineRun(
        engine=engine,
        patients=patients,
        rows=rows,
        seconds=seconds,
        started_s=started_s or 0.0,
        executor_kb=sum(peaks.jvm_kb.values()) + sum(peaks.workers_kb.values()),
        driver_kb=peaks.driver_kb,
        python_workers=len(peaks.workers_kb),
        loadavg_1m=round(os.getloadavg()[0], 2),
    )


ENGINES = ("embedded", *MASTERS)


def measure(count: int, workdir: Path, seed: int, timeout_s: float, progress: Callable[[str], None]) -> SparkResult:
    directory = workdir / f"population-{count}"
    counts = write_ndjson(directory, population(count, seed))
    size = sum(p.stat().st_size for p in directory.iterdir())
    result = SparkResult(count, sum(counts.values()), size, orjson_floor(directory))
    for engine in ENGINES:
        progress(f"  spark: {count:,} patients, {engine}")
        result.runs.append(run_engine(engine, directory, workdir, count, timeout_s))
    if len({run.rows for run in result.runs}) != 1:
        raise RuntimeError(f"the engines wrote different worklists: {[(r.engine, r.rows) for r in result.runs]}")
    return result


def run(quick: bool = False, seed: int = SEED, progress: Callable[[str], None] = print) -> list[SparkResult]:
    """Each size in turn (generation time is not measured)."""
    with tempfile.TemporaryDirectory(prefix="fhirsvc-bench-spark-") as tmp:
        return [measure(count, Path(tmp), seed, 3600, progress) for count in (QUICK_SIZES if quick else SIZES)]


def table(results: list[SparkResult]) -> str:
    header = ("patients", "engine", "patients/s", "net/s", "s", "floor x", "executor MB", "driver MB", "load")
    rows = []
    for result in results:
        floor = result.patients / result.floor_s
        for run in result.runs:
            rows.append(
                (
                    f"{result.patients:,}",
                    run.engine,
                    f"{run.patients_per_s:,.0f}",
                    f"{run.net_per_s:,.0f}",
                    f"{run.seconds:,.1f}",
                    f"{floor / run.net_per_s:,.1f}",
                    f"{run.executor_kb / 1024:,.0f}" if run.executor_kb else "-",
                    f"{run.driver_kb / 1024:,.0f}",
                    f"{run.loadavg_1m:.1f}",
                )
            )
        floor_row = (f"{result.patients:,}", "orjson floor", f"{floor:,.0f}", "", f"{result.floor_s:.1f}", "1")
        rows.append((*floor_row, "", "", ""))
    return _table(header, rows)
