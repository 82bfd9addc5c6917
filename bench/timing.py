"""Bounded repeat-and-median timing with time.perf_counter, and percentiles."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    repeats: int


def measure(
    func: Callable[[], object],
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 500,
    budget_s: float = 2.0,
) -> Timing:
    """Median of at least `min_repeats` calls, more while within `budget_s`, never more than `max_repeats`."""
    for _ in range(warmup):
        func()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_repeats:
        begin = time.perf_counter()
        func()
        samples.append(time.perf_counter() - begin)
        if len(samples) >= min_repeats and time.perf_counter() - started >= budget_s:
            break
    return Timing(statistics.median(samples) * 1000, min(samples) * 1000, len(samples))


def interleaved(
    funcs: Mapping[str, Callable[[], object]],
    *,
    min_rounds: int = 3,
    max_rounds: int = 200,
    budget_s: float = 2.0,
    max_calls_per_round: int = 50,
) -> dict[str, Timing]:
    """Medians of several functions measured in turns, so that a busy machine slows them all alike.

    Each round calls every function, the cheaper ones more often (about half the slowest one's time each), so
    that every median rests on enough samples.
    """
    first = {}
    for name, func in funcs.items():  # warm-up, and a first estimate of each cost
        func()
        begin = time.perf_counter()
        func()
        first[name] = max(time.perf_counter() - begin, 1e-6)
    slowest = max(first.values())
    calls = {name: max(1, min(max_calls_per_round, round(slowest / 2 / cost))) for name, cost in first.items()}
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    started = time.perf_counter()
    for rounds in range(1, max_rounds + 1):
        for name, func in funcs.items():
            for _ in range(calls[name]):
                begin = time.perf_counter()
                func()
                samples[name].append(time.perf_counter() - begin)
        if rounds >= min_rounds and time.perf_counter() - started >= budget_s:
            break
    return {
        name: Timing(statistics.median(values) * 1000, min(values) * 1000, len(values))
        for name, values in samples.items()
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of unsorted values; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
