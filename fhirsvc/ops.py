"""Operations endpoints: /livez (process), /readyz (store reachable), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from fhirsvc.store.db import Store
from fhirsvc.store.repository import feedback_counts

router = APIRouter(tags=["ops"])


@router.get("/livez")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    store: Store = request.app.state.store
    ready = await run_in_threadpool(store.ping)
    return Response(
        b'{"status":"ok"}' if ready else b'{"status":"store unreachable"}',
        status_code=200 if ready else 503,
        media_type="application/json",
    )


class FeedbackCollector(Collector):
    """Acceptance and override counts per rule, read from the store at scrape time (durable across restarts)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "fhirsvc_card_feedback", "CDS Hooks feedback on cards, by rule and outcome", labels=["rule", "outcome"]
        )
        with self.store.session() as session:
            for (rule, outcome), count in sorted(feedback_counts(session).items()):
                family.add_metric([rule, outcome], count)
        yield family


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(FeedbackCollector(request.app.state.store))
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
