"""FastAPI app factory; the lifespan loads mappings once and owns the FHIR client pool."""

from __future__ import annotations

import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware

from fhirsvc.api.cds import router as cds_router
from fhirsvc.api.client_jwt import CdsAuthenticator, Unauthorized, unauthorized
from fhirsvc.api.evaluation import EvaluationPool
from fhirsvc.api.issuer_keys import JWKS_TIMEOUT
from fhirsvc.api.jwks import router as jwks_router
from fhirsvc.api.limits import BodySizeLimit
from fhirsvc.api.logs import Clock, RequestLog
from fhirsvc.api.ops import RequestMetrics
from fhirsvc.api.ops import router as ops_router
from fhirsvc.api.responses import document_as_served, operation_outcome
from fhirsvc.api.smart_app import AppError, AppState, app_error
from fhirsvc.api.smart_app import router as smart_app_router
from fhirsvc.api.therapy import router as patients_router
from fhirsvc.config import Settings, get_settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge, load_knowledge

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    knowledge: Knowledge | None = None,
    fhir_transport: httpx.AsyncBaseTransport | None = None,
    jwks_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.monotonic,
) -> FastAPI:
    """Build the service. Everything per-process (mappings, HTTP pools) is made here, never per request.

    `fhir_transport` and `jwks_transport` replace the network for FHIR servers and CDS client JWKS URLs (tests).
    `clock` (monotonic seconds) times requests and the CDS time budget; tests pass the event loop's virtual clock.
    """
    settings = settings or get_settings()
    knowledge = knowledge or load_knowledge(
        overrides=settings.thresholds, enabled=settings.programs, rule_kinds=RULE_KINDS
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _warn_about_trust(settings)
        app.state.fhir_pool = FhirClientPool(settings, transport=fhir_transport)
        app.state.store = Store(settings.store_url)
        app.state.store.upgrade()
        # JWKS fetches never follow redirects: only the registered jwks_url is trusted.
        jwks_http = httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=False, transport=jwks_transport)
        app.state.cds_auth = CdsAuthenticator(settings, app.state.store, jwks_http, clock)
        app.state.evaluations = EvaluationPool(settings.max_concurrent_evaluations, clock)
        if settings.smart_app_client_id:  # a bad key file fails the start, not the first sign-in
            app.state.smart_app = AppState(settings)
        # Mappings and pools live as long as the process: keep them out of every garbage collection
        # (large requests otherwise pay for scanning them again and again; bench/README.md finding 5).
        gc.freeze()
        try:
            yield
        finally:
            app.state.evaluations.close()
            await jwks_http.aclose()
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
    app.state.clock = clock
    app.state.metrics = RequestMetrics()
    # Unset, a random salt still keeps patient ids out of the logs; hashes then correlate within one process only.
    app.state.log_salt = settings.log_salt.get_secret_value() if settings.log_salt else secrets.token_hex(16)
    # Browser-based CDS clients (the CDS Hooks sandbox, SMART apps) call from another origin: only those listed in
    # FHIRSVC_CORS_ORIGINS may (none by default; `fhirsvc demo --serve` opens it to the CDS Hooks sandbox).
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outermost: 401, 413 and CORS are logged too.
    app.add_middleware(RequestLog, observer=app.state.metrics.observe, clock=clock)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> Response:
        return operation_outcome(400, f"invalid request: {exc.errors()[0].get('msg', 'malformed')}")

    app.add_exception_handler(Unauthorized, unauthorized)
    app.include_router(ops_router)
    app.include_router(cds_router)
    app.include_router(patients_router)
    app.include_router(jwks_router)  # SMART Backend Services: our public keys
    app.add_exception_handler(AppError, app_error)
    app.include_router(smart_app_router)  # SMART App Launch: the timeline page (404 unless a client id is set)

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        auth_on = settings.cds_auth == "on"
        return document_as_served(generate_openapi(), auth_on, settings.cds_auth_discovery)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _warn_about_trust(settings: Settings) -> None:
    """Say at start-up, loudly, when the service trusts no one or everyone."""
    if settings.cds_auth == "off":
        log.warning(
            "FHIRSVC_CDS_AUTH=off: CDS Hooks calls are accepted WITHOUT client authentication. "
            "For local development only; never expose this service to a network."
        )
    elif not settings.cds_clients:
        log.warning("no FHIRSVC_CDS_CLIENTS configured: every CDS Hooks service and feedback call is refused (401)")
    if not settings.fhir_servers:
        log.warning("no FHIRSVC_FHIR_SERVERS configured: requests naming a fhirServer will be refused (400)")
    if settings.log_salt is None:
        log.info("FHIRSVC_LOG_SALT unset: patient hashes in logs are salted per process")
