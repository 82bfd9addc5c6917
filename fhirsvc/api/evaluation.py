"""Evaluations in a bounded pool of worker threads, each awaited no longer than the end of its time budget."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fhirsvc.api.logs import Clock

T = TypeVar("T")


class EvaluationPool:
    """Runs `evaluate_record` off the event loop, at most `threads` at a time, so /readyz and the other routes stay
    responsive and hostile calls cannot take every thread of the shared pool (the store and /readyz use that one).

    A call waits for its evaluation until its deadline and no longer: one still queued then is never started, one
    still running finishes in its thread and its late result is discarded (pure Python cannot be interrupted).
    """

    def __init__(self, threads: int, clock: Clock) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhirsvc-evaluate")
        self._clock = clock

    async def run(self, work: Callable[[], T], deadline: float) -> T | None:
        """`work()`'s result, or None when it did not finish by `deadline` (a reading of the app clock)."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            return None
        running = asyncio.get_running_loop().run_in_executor(self._executor, work)
        try:
            # On timeout wait_for cancels `running`, which cancels the work if it has not started yet.
            result = await asyncio.wait_for(running, timeout=remaining)
        except TimeoutError:
            return None
        # The loop may see a finished evaluation and its expired timer at once: the budget decides, not the order.
        return result if self._clock() <= deadline else None

    def close(self) -> None:
        """Drop the queued evaluations; running ones end by themselves (their results are no longer awaited)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
