"""Machine description, tables and target checks for the benchmark results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.inprocess import SizeResult
from bench.load import LoadReport
from bench.population import PopulationResult

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:  # read-only
        done = subprocess.run(  # noqa: S603
            [git, "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    """Where the figures come from; the load average says whether the machine was shared at the time."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "commit": _commit(),
    }


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    higher_is_better: bool = False

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": round(self.value, 3), "limit": self.limit, "met": self.met}

    def line(self) -> str:
        sign = "≥" if self.higher_is_better else "≤"
        return f"  [{'met ' if self.met else 'MISS'}] {self.name}: {self.value:,.2f} (target {sign} {self.limit:g})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def in_process_table(results: list[SizeResult]) -> str:
    rows = [
        [
            f"{r.size:,}",
            f"{r.body_bytes / 1024:,.0f}",
            f"{r.floor.median_ms:,.2f}",
            f"{r.eval.median_ms:,.2f}",
            f"{r.naive.median_ms:,.1f}",
            f"{r.eval.median_ms / r.floor.median_ms:.1f}x",
            f"1/{r.naive.median_ms / r.eval.median_ms:.1f}",
            str(r.cards),
        ]
        for r in results
    ]
    header = ["resources", "body KB", "orjson ms", "eval ms", "fhir.resources ms", "eval/floor", "eval/naive", "cards"]
    return _table(header, rows)


def in_process_targets(results: list[SizeResult]) -> list[Target]:
    by_size = {r.size: r for r in results}
    targets = []
    if 10 in by_size:
        targets.append(Target("eval ms at 10 resources", by_size[10].eval.median_ms, 0.3))
    if 100 in by_size:
        r = by_size[100]
        targets.append(Target("eval/orjson floor at 100 resources", r.eval.median_ms / r.floor.median_ms, 4))
    if 1_000 in by_size:
        r = by_size[1_000]
        targets.append(Target("eval/orjson floor at 1,000 resources", r.eval.median_ms / r.floor.median_ms, 3))
        targets.append(Target("eval/fhir.resources at 1,000 resources", r.eval.median_ms / r.naive.median_ms, 0.1))
        if 10_000 in by_size:
            ratio = by_size[10_000].eval.median_ms / r.eval.median_ms
            targets.append(Target("eval 10,000 / eval 1,000", ratio, 12))
    return targets


def load_table(report: LoadReport) -> str:
    rows = []
    for r in report.results:
        floor, signed = report.floor_at(r.concurrency), report.signed_at(r.concurrency)
        rows.append(
            [
                str(r.concurrency),
                f"{r.rps:,.1f}",
                f"{r.p50_ms:,.1f}",
                f"{r.p99_ms:,.1f}",
                f"{r.requests:,}",
                str(r.errors),
                f"{r.server_peak_rss_kb / 1024:,.0f}",
                f"{signed.rps:,.1f}" if signed else "-",
                f"{signed.p99_ms:,.1f}" if signed else "-",
                str(signed.errors) if signed else "-",
                f"{floor.rps:,.1f}" if floor else "-",
                f"{floor.p99_ms:,.1f}" if floor else "-",
                f"{r.rps / floor.rps:.2f}" if floor and floor.rps else "-",
            ]
        )
    header = ["clients", "requests/s", "p50 ms", "p99 ms", "requests", "errors", "worker peak RSS MB"]
    header += ["signed req/s", "signed p99 ms", "signed errors", "floor req/s", "floor p99 ms", "of floor"]
    note = (
        "\n  signed: the same service with FHIRSVC_CDS_AUTH=on, every call carrying its own ES384 client JWT"
        "\n  floor: the same server and workers (fhirsvc/api/serving.py) with an app that only reads and parses"
        " the body (bench/floor_app.py)"
    )
    return _table(header, rows) + note


def load_targets(report: LoadReport) -> list[Target]:
    at_ten = [r for r in report.results if r.concurrency == 10]
    if not at_ten:
        return []
    return [
        Target("requests/s at 10 concurrent", at_ten[0].rps, 300, higher_is_better=True),
        Target("p99 ms at 10 concurrent", at_ten[0].p99_ms, 50),
    ]


def population_table(baseline: PopulationResult, results: list[PopulationResult]) -> str:
    rows = [
        [
            f"{r.patients:,}",
            f"{r.resources:,}",
            f"{r.ndjson_bytes / 1e6:,.1f}",
            f"{r.seconds:,.2f}",
            f"{r.patients_per_s:,.0f}",
            f"{r.seconds / r.patients * 1000:,.3f}",
            f"{max(0.0, r.seconds - baseline.seconds) / r.patients * 1000:,.3f}" if r is not baseline else "-",
            f"{r.floor_s:,.3f}",
            f"{r.floor_ratio:,.1f}x",
            f"{r.rows:,}",
            f"{r.peak_rss_kb / 1024:,.1f}",
            f"{r.evaluate.seconds:,.2f}",
            f"{r.evaluate_patients_per_s:,.0f}",
            f"{r.evaluate.peak_rss_kb / 1024:,.1f}",
        ]
        for r in [baseline, *results]
    ]
    header = ["patients", "resources", "NDJSON MB", "seconds", "patients/s", "ms/patient", "ms/patient*"]
    header += ["floor s", "of floor", "rows", "peak RSS MB", "evaluate s", "evaluate patients/s", "evaluate RSS MB"]
    note = (
        "\n  seconds, patients/s, ms/patient: `fhirsvc population DIR --out X.parquet` (the embedded engine), wall"
        " time of the child process including start-up"
        "\n  * wall time minus the one-patient run (start-up, mappings), per patient"
        "\n  floor: orjson.loads of every line of the same files, in the benchmark process (median of 3)"
        "\n  evaluate: `fhirsvc evaluate DIR` (the JSON contract) on the same files; the population engine's peak RSS"
        " also holds up to 10,000 worklist rows before it writes a row group"
    )
    return _table(header, rows) + note


def population_targets(results: list[PopulationResult]) -> list[Target]:
    """Throughput of the embedded engine, within 10x of the parse floor; flat memory of `fhirsvc evaluate`: 10x the
    patients may cost at most 1.5x the peak RSS (the index grows; records do not pile up)."""
    if not results:
        return []
    small, large = results[0], results[-1]
    targets = [
        Target(f"patients/s at {large.patients:,} patients", large.patients_per_s, 2_000, higher_is_better=True),
        Target(f"population/orjson floor at {large.patients:,} patients", large.floor_ratio, 10),
    ]
    if len(results) >= 2:
        name = f"evaluate peak RSS {large.patients:,} / {small.patients:,} patients"
        targets.append(Target(name, large.evaluate.peak_rss_kb / small.evaluate.peak_rss_kb, 1.5))
    return targets
