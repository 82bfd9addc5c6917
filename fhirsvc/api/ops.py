"""Operations endpoints: /livez (process), /readyz (store reachable), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from pydantic import BaseModel

from fhirsvc.store.db import Store
from fhirsvc.store.repository import feedback_counts

router = APIRouter(tags=["ops"])

# Latency buckets around the CDS time budget (default 2 s) and the ~500 ms CDS Hooks clients hope for.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)


class Status(BaseModel):
    status: str


@router.get("/livez", response_model=Status)
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Status,
    responses={503: {"model": Status, "description": "The store is unreachable"}},
)
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


class RequestMetrics:
    """Request count and latency per method, route template and status; one per app (never the global registry)."""

    def __init__(self) -> None:
        labels = ["method", "route", "status"]
        self.requests = Counter(
            "fhirsvc_http_requests", "HTTP requests by method, route template and status", labels, registry=None
        )
        self.latency = Histogram(
            "fhirsvc_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=None,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        # Route templates, not raw paths: label values stay few, and no patient id becomes a label.
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format 0.0.4", "content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(FeedbackCollector(request.app.state.store))  # from the store: the same in every process
    multiproc_dir: Path | None = request.app.state.settings.prometheus_multiproc_dir
    if multiproc_dir is not None:
        # Several worker processes: each writes its counts to its own file there, and whichever worker answers the
        # scrape adds up all of them (https://prometheus.github.io/client_python/multiprocess/).
        MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    else:
        request_metrics: RequestMetrics = request.app.state.metrics
        registry.register(request_metrics.requests)
        registry.register(request_metrics.latency)
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
