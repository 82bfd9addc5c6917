"""Population: `fhirsvc evaluate` over Bulk Data NDJSON in a child process: patients/s and peak memory (VmHWM)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.generate import AS_OF, SEED, population, write_ndjson

SIZES = (1_000, 10_000)
QUICK_SIZES = (100, 1_000)
BASELINE = 1  # one patient: the process's fixed cost (interpreter, imports, mappings)


@dataclass(frozen=True)
class PopulationResult:
    patients: int
    resources: int
    ndjson_bytes: int
    seconds: float
    peak_rss_kb: int

    @property
    def patients_per_s(self) -> float:
        return self.patients / self.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "patients_per_s": round(self.patients_per_s, 1),
            "peak_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "seconds": round(self.seconds, 2),
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


def evaluate_child(directory: Path, output: Path, timeout_s: float) -> tuple[float, int]:
    """Run `fhirsvc evaluate` on a directory; wall seconds and the child's peak RSS in KiB.

    The peak is VmHWM sampled every 10 ms: wait4's ru_maxrss would not do, because Linux carries the parent's
    peak over into a child it spawns (the benchmark process is larger than `fhirsvc evaluate` itself).
    """
    command = [*_command(), "evaluate", str(directory), "--as-of", AS_OF.isoformat()]
    peak = 0
    with output.open("wb") as out, (output.parent / "stderr.txt").open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err)  # noqa: S603
        deadline = started + timeout_s
        while proc.poll() is None:  # bounded: the child is killed at the deadline
            peak = max(peak, vm_hwm_kb(proc.pid))
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait(timeout=30)
                raise TimeoutError(f"fhirsvc evaluate took longer than {timeout_s:.0f} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"fhirsvc evaluate exited {proc.returncode}: {(output.parent / 'stderr.txt').read_text()}")
    return seconds, peak


def measure_population(count: int, workdir: Path, seed: int = SEED, timeout_s: float = 1800) -> PopulationResult:
    directory = workdir / f"population-{count}"
    counts = write_ndjson(directory, population(count, seed))
    size = sum(p.stat().st_size for p in directory.iterdir())
    output = workdir / f"evaluate-{count}.json"
    seconds, peak = evaluate_child(directory, output, timeout_s)
    items = orjson.loads(output.read_bytes())
    if len(items) != count:
        raise RuntimeError(f"fhirsvc evaluate returned {len(items)} results for {count} patients")
    output.unlink()
    return PopulationResult(count, sum(counts.values()), size, seconds, peak)


def run(
    quick: bool = False, seed: int = SEED, progress: Callable[[str], None] = print
) -> tuple[PopulationResult, list[PopulationResult]]:
    """The one-patient baseline, then each population size (generation time is not measured)."""
    with tempfile.TemporaryDirectory(prefix="fhirsvc-bench-") as tmp:
        workdir = Path(tmp)
        baseline = measure_population(BASELINE, workdir, seed)
        results = []
        for count in QUICK_SIZES if quick else SIZES:
            progress(f"  population: generating and evaluating {count:,} patients")
            results.append(measure_population(count, workdir, seed))
    return baseline, results
