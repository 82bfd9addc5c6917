"""In-process evaluation per record size: request body bytes → cards, against orjson (floor) and fhir.resources."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any, TypeVar, cast

import orjson
from fhir.resources.R4B import get_fhir_model_class

from bench.generate import AS_OF, SEED, SIZES, patient_record, request_body
from bench.timing import Timing, interleaved
from fhirsvc.api.limits import may_hold_overlong_text, overlong_text, resource_count
from fhirsvc.cds.models import CdsRequest, response_body
from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.gather import gather
from fhirsvc.record.model import bundle_resources
from fhirsvc.render.cards import cards_for
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge

T = TypeVar("T")


class Pipeline:
    """The service's path for one hook call minus HTTP: parse, prefetch → record, evaluate, cards, serialise."""

    def __init__(self, knowledge: Knowledge | None = None, as_of: date = AS_OF) -> None:
        self.settings = Settings(today=as_of)
        self.knowledge = knowledge or load_knowledge(rule_kinds=RULE_KINDS)
        self.as_of = as_of
        self.loop = asyncio.new_event_loop()
        self.pool = FhirClientPool(self.settings)  # never used: every prefetch key is present
        # As the service does once it has started (fhirsvc/api/app.py): what lives as long as the process (mappings,
        # modules, fhir.resources' models) is kept out of the collections that every large request triggers.
        gc.collect()
        gc.freeze()

    def __call__(self, body: bytes) -> bytes:
        document = orjson.loads(body)
        request = CdsRequest.model_validate(document)
        # The service's limits (fhirsvc/api/cds.py): every string of the request is looked at once.
        if resource_count(request.prefetch, request.context) > self.settings.max_resources_per_request:
            raise ValueError("over FHIRSVC_MAX_RESOURCES_PER_REQUEST")
        limit = self.settings.max_text_chars
        if may_hold_overlong_text(body, limit) and overlong_text(document, limit) is not None:
            raise ValueError("a text over FHIRSVC_MAX_TEXT_CHARS")
        gathered = self._await(gather(request.patient_id, request.prefetch, None, None, self.settings.fhir_max_pages))
        result = evaluate_record(gathered.record, self.knowledge, self.as_of)
        return orjson.dumps(response_body(cards_for(result)))

    def _await(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """What `await coroutine` costs inside the service's request task: a gather from a complete prefetch never
        suspends, so it runs to its end at once. `loop.run_until_complete` would add a Task and two turns of the
        event loop per call (about 0.03 ms, a tenth of a call at 10 resources) that the service does not pay."""
        try:
            coroutine.send(None)
        except StopIteration as done:
            return cast(T, done.value)
        coroutine.close()
        raise RuntimeError("gather suspended: the benchmark's prefetch must be complete (no I/O on this path)")

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()


def floor(body: bytes) -> Any:
    """The physical floor: the bytes have to be parsed once whatever the service does."""
    return orjson.loads(body)


def _resources(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in (data.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield from (resource for _, resource in bundle_resources(value))
        elif isinstance(value, dict):
            yield value


def naive(body: bytes) -> int:
    """What a naive service does first: every resource through fhir.resources R4B models (no evaluation yet)."""
    count = 0
    for resource in _resources(orjson.loads(body)):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        count += 1
    return count


@dataclass(frozen=True)
class SizeResult:
    size: int
    body_bytes: int
    cards: int
    eval: Timing
    floor: Timing
    naive: Timing

    def as_json(self) -> dict[str, Any]:
        return {
            "eval_ms": round(self.eval.median_ms, 3),
            "orjson_floor_ms": round(self.floor.median_ms, 3),
            "fhir_resources_ms": round(self.naive.median_ms, 3),
            "body_bytes": self.body_bytes,
            "cards": self.cards,
            "repeats": {"eval": self.eval.repeats, "floor": self.floor.repeats, "naive": self.naive.repeats},
        }


def _budget(size: int, quick: bool) -> dict[str, Any]:
    if size >= 10_000:
        return {"budget_s": 2.0 if quick else 10.0, "min_rounds": 1 if quick else 2}
    return {"budget_s": 0.5 if quick else 3.0, "min_rounds": 2 if quick else 5}


def run(
    sizes: tuple[int, ...] = SIZES,
    quick: bool = False,
    seed: int = SEED,
    progress: Callable[[str], None] = print,
) -> list[SizeResult]:
    pipeline = Pipeline()
    results = []
    try:
        for size in sizes:
            body = request_body(patient_record(size, seed))
            cards = len(orjson.loads(pipeline(body))["cards"])
            progress(f"  in-process {size:>6} resources ({len(body) / 1024:,.0f} KB): eval, orjson, fhir.resources")
            funcs = {"eval": partial(pipeline, body), "floor": partial(floor, body), "naive": partial(naive, body)}
            timed = interleaved(funcs, **_budget(size, quick))
            results.append(SizeResult(size, len(body), cards, timed["eval"], timed["floor"], timed["naive"]))
    finally:
        pipeline.close()
    return results
