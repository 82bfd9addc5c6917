"""A virtual clock for asyncio: time moves only while every task waits on a timer, by exactly the time awaited."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClock:
    """Monotonic seconds that pass only when the event loop made by `new_loop` would otherwise sleep.

    A fetch that `await asyncio.sleep(5)`s takes 5 s of this clock and no real time; work in between takes none.
    Give the same clock to the app (`create_app(clock=...)`) so its time budget and the loop's timers agree: what a
    test observes then depends on the delays it scripts, never on how fast the machine is.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def new_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop running on this clock (for `TestClient(backend_options={"loop_factory": ...})`)."""
        return _VirtualTimeLoop(self)


class _IdleAdvancingSelector(selectors.DefaultSelector):
    """Where the loop would block until its next timer, jump the clock to that timer instead.

    Sockets, the TestClient's hand-over and worker threads finishing still wake the loop for real: with no timer
    due, it waits for them as usual. Work the loop hands to `run_in_executor` takes no virtual time: while some
    is running the clock stands still and the loop waits for it (an anyio worker thread is not seen, so the
    timers of a test must not race those).
    """

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock
        self.executor_jobs = 0  # run_in_executor calls not finished yet (counted on the loop's own thread)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self.executor_jobs:  # no timer at all, or a job running: wait for I/O or a thread
            return super().select(None)
        self._clock.advance(timeout)
        return []


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        self._idle_selector = _IdleAdvancingSelector(clock)
        super().__init__(self._idle_selector)
        self._virtual_clock = clock

    def run_in_executor(self, executor: Executor | None, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        job = super().run_in_executor(executor, func, *args)
        self._idle_selector.executor_jobs += 1
        job.add_done_callback(self._job_done)
        return job

    def _job_done(self, _: asyncio.Future[Any]) -> None:
        self._idle_selector.executor_jobs -= 1

    def time(self) -> float:
        return self._virtual_clock()
