"""FastAPI app factory; the lifespan loads mappings once and owns the FHIR client pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from fhirsvc.cds.routes import router as cds_router
from fhirsvc.config import Settings, get_settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.http import operation_outcome
from fhirsvc.ops import router as ops_router
from fhirsvc.patients import router as patients_router
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    knowledge: Knowledge | None = None,
    fhir_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the service. Everything per-process (mappings, HTTP pools) is made here, never per request."""
    settings = settings or get_settings()
    knowledge = knowledge or load_knowledge(overrides=settings.thresholds, enabled=settings.programs)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.fhir_pool = FhirClientPool(settings, transport=fhir_transport)
        app.state.store = Store(settings.store_url)
        app.state.store.upgrade()
        try:
            yield
        finally:
            await app.state.fhir_pool.aclose()
            app.state.store.close()

    app = FastAPI(
        title="fhirsvc",
        summary="CDS Hooks service suggesting evaluation for second-line treatment",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.knowledge = knowledge
    # Browser-based CDS clients (the CDS Hooks sandbox, SMART apps) call from another origin.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> Response:
        return operation_outcome(400, f"invalid request: {exc.errors()[0].get('msg', 'malformed')}")

    app.include_router(ops_router)
    app.include_router(cds_router)
    app.include_router(patients_router)
    return app
