"""The timeline page as a SMART App Launch 2.x app: launch, callback (code + PKCE), and the page for the session.

https://hl7.org/fhir/smart-app-launch/app-launch.html: the EHR (or a user, standalone) opens /app/launch with the
FHIR server as `iss` (and `launch` from an EHR); we read the server's .well-known/smart-configuration, send the
user to its authorization endpoint with PKCE S256 and a fresh `state`, and exchange the code at its token endpoint.
The access token stays in this process (smart_session.SessionStore); the browser holds only a signed cookie naming
the session. CDS Hooks 2.0 #link: a card's `smart` link carries `appContext`, which the EHR hands back in the token
response; it names the finding the page opens on.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
from fastapi import APIRouter, Cookie, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from fhirsvc.api.deps import today
from fhirsvc.api.smart_session import (
    AppSession,
    CookieSigner,
    PendingLaunch,
    SessionStore,
    new_pkce_verifier,
    new_state,
    pkce_challenge,
)
from fhirsvc.config import Settings, is_loopback_host, require_tls_endpoint
from fhirsvc.fhir.auth import CLIENT_ASSERTION_TYPE, SmartBackendAuth, load_key_set
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.errors import FhirError
from fhirsvc.fhir.urls import fhir_server_allowed, normalise_base_url
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.gather import DataUnavailable, fetch_patient
from fhirsvc.render.timeline import timeline_page
from fhirsvc.terminology.knowledge import Knowledge

log = logging.getLogger(__name__)
router = APIRouter(tags=["SMART app"], include_in_schema=False)

COOKIE_NAME = "fhirsvc_app"
COOKIE_PATH = "/app"
# A finding id is a UUID (fhirsvc.findings): anything else from appContext or ?finding= is ignored.
_FINDING_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The page is self-contained (inline CSS, inline SVG, no script): nothing else may load. Pages hold PHI: no caching,
# and no Referer to the guideline sites it links to.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
}


class AppState:
    """Per-process state of the app: sessions, the cookie signer and (confidential client) the signing key."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        secret = settings.smart_app_session_secret
        key = secret.get_secret_value().encode("utf-8") if secret else secrets.token_bytes(32)
        self.sessions = SessionStore(clock)
        self.cookies = CookieSigner(key, settings.smart_app_session_seconds, clock)
        self.signing_key = (
            load_key_set(settings.smart_private_key_file, settings.smart_kid).signing
            if settings.smart_app_client_type == "confidential" and settings.smart_private_key_file
            else None
        )


def _state(request: Request) -> tuple[Settings, AppState]:
    settings: Settings = request.app.state.settings
    if settings.smart_app_client_id is None:
        raise AppError(404, "Not configured", "This service has no SMART app client registered.")
    app_state: AppState | None = getattr(request.app.state, "smart_app", None)
    if app_state is None:
        app_state = request.app.state.smart_app = AppState(settings)
    return settings, app_state


class AppError(Exception):
    """An error shown to the user as a small HTML page (never a traceback)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(title)
        self.status, self.title, self.detail = status, title, detail


def error_page(exc: AppError) -> HTMLResponse:
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(exc.title)}</title></head><body><h1>{html.escape(exc.title)}</h1>"
        f"<p>{html.escape(exc.detail)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=exc.status, headers=_PAGE_HEADERS)


async def app_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return error_page(exc)


def _finding_id(value: object) -> str | None:
    return value if isinstance(value, str) and _FINDING_ID.match(value) else None


def finding_from_app_context(app_context: object) -> str | None:
    """The finding named by a card's appContext (JSON `{"program": …, "finding": …}`, as card_for writes it)."""
    if not isinstance(app_context, str):
        return None
    try:
        parsed = orjson.loads(app_context)
    except orjson.JSONDecodeError:
        return None
    return _finding_id(parsed.get("finding")) if isinstance(parsed, dict) else None


async def _json(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    try:
        response = await http.request(method, url, headers={"Accept": "application/json"}, **kwargs)
    except httpx.HTTPError as exc:
        raise AppError(502, "Authorization server unreachable", f"{type(exc).__name__} calling it.") from None
    try:
        return response.status_code, orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.status_code, None


async def _discover(http: httpx.AsyncClient, iss: str) -> tuple[str, str]:
    """authorization_endpoint and token_endpoint from `<iss>/.well-known/smart-configuration`."""
    status, config = await _json(http, "GET", f"{normalise_base_url(iss)}/.well-known/smart-configuration")
    if status != 200 or not isinstance(config, dict):
        raise AppError(502, "SMART configuration unavailable", f"The FHIR server's SMART configuration: {status}.")
    try:
        return (
            require_tls_endpoint(str(config.get("authorization_endpoint"))),
            require_tls_endpoint(str(config.get("token_endpoint"))),
        )
    except ValueError:
        raise AppError(502, "SMART configuration unusable", "No usable authorization or token endpoint.") from None


@router.get("/app/launch")
async def launch(
    request: Request, iss: str | None = None, launch: str | None = None, finding: str | None = None
) -> Response:
    """EHR launch (`launch` + `iss`) or standalone launch (`iss` only): off to the authorization server."""
    settings, app_state = _state(request)
    if not iss:
        raise AppError(400, "Launch refused", "The launch names no FHIR server (iss).")
    if not fhir_server_allowed(iss, settings.fhir_servers):
        raise AppError(400, "Launch refused", "This FHIR server is not one this service may read from.")
    pool: FhirClientPool = request.app.state.fhir_pool
    authorize, token_endpoint = await _discover(pool.client(iss).http, iss)
    state, verifier = new_state(), new_pkce_verifier()
    app_state.sessions.add_launch(
        state, PendingLaunch(iss, token_endpoint, verifier, _finding_id(finding), app_state.sessions.now())
    )
    # `launch` asks for the EHR's context; a standalone launch asks the user to pick a patient (launch/patient).
    context_scope = "launch" if launch else "launch/patient"
    params = {
        "response_type": "code",
        "client_id": settings.smart_app_client_id,
        "redirect_uri": settings.smart_app_callback_url,
        "scope": f"{context_scope} {settings.smart_app_scope}",
        "state": state,
        "aud": iss,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch
    separator = "&" if urlsplit(authorize).query else "?"
    return RedirectResponse(f"{authorize}{separator}{urlencode(params)}", status_code=302, headers=_PAGE_HEADERS)


def _token_form(settings: Settings, app_state: AppState, pending: PendingLaunch, code: str) -> dict[str, str]:
    assert settings.smart_app_client_id is not None
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": settings.smart_app_callback_url,
        "code_verifier": pending.verifier,
    }
    if app_state.signing_key is None:
        form["client_id"] = settings.smart_app_client_id  # public client
    else:  # client-confidential-asymmetric.html: the same assertion the poller signs, for this token endpoint
        signer = SmartBackendAuth(pending.iss, settings.smart_app_client_id, app_state.signing_key, "", http=None)
        form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
        form["client_assertion"] = signer.assertion(pending.token_endpoint)
    return form


@router.get("/app/callback")
async def callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    """The authorization server's redirect: check `state`, exchange the code, open a session."""
    settings, app_state = _state(request)
    pending = app_state.sessions.take_launch(state) if state else None
    if pending is None:
        raise AppError(400, "Sign-in refused", "Unknown or expired state: start again from the EHR.")
    if error or not code:
        raise AppError(401, "Sign-in refused", f"The authorization server answered: {(error or 'no code')[:64]}.")
    pool: FhirClientPool = request.app.state.fhir_pool
    http = pool.client(pending.iss).http
    status, body = await _json(
        http, "POST", pending.token_endpoint, data=_token_form(settings, app_state, pending, code)
    )
    if status != 200 or not isinstance(body, dict):
        reason = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else status
        log.warning("SMART app: token endpoint refused the code (%s)", str(reason)[:64])
        raise AppError(401, "Sign-in refused", f"The token endpoint refused the code ({str(reason)[:64]}).")
    token, patient = body.get("access_token"), body.get("patient")
    if not isinstance(token, str) or not token or str(body.get("token_type", "bearer")).lower() != "bearer":
        raise AppError(401, "Sign-in refused", "The token response holds no bearer access token.")
    if not isinstance(patient, str) or not patient:
        raise AppError(400, "No patient", "The launch gave no patient in context.")
    finding = finding_from_app_context(body.get("appContext")) or pending.finding
    expires_in = body.get("expires_in")
    lifetime = float(settings.smart_app_session_seconds)
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = min(lifetime, float(expires_in))
    session_id = app_state.sessions.add_session(
        AppSession(pending.iss, patient, token, finding, app_state.sessions.now() + lifetime)
    )
    response = RedirectResponse(f"/app#finding-{finding}" if finding else "/app", status_code=303)
    response.headers.update(_PAGE_HEADERS)
    response.set_cookie(
        COOKIE_NAME,
        app_state.cookies.sign(session_id),
        max_age=int(lifetime),
        path=COOKIE_PATH,
        httponly=True,
        # Secure outside loopback: browsers treat http://localhost as a secure context, other http hosts not.
        secure=not is_loopback_host(urlsplit(settings.public_base).hostname or ""),
        samesite="lax",
    )
    return response


@router.get("/app")
async def app_page(
    request: Request,
    as_of: Annotated[date, Depends(today)],
    fhirsvc_app: Annotated[str | None, Cookie()] = None,
) -> Response:
    """The timeline page of the session's patient, fetched with the session's access token."""
    settings, app_state = _state(request)
    session_id = app_state.cookies.verify(fhirsvc_app) if fhirsvc_app else None
    session = app_state.sessions.session(session_id) if session_id else None
    if session is None:
        raise AppError(401, "Session expired", "Open the app again from the EHR.")
    pool: FhirClientPool = request.app.state.fhir_pool
    try:
        gathered = await fetch_patient(
            pool, session.iss, session.patient, session.access_token, settings.fhir_max_pages
        )
    except DataUnavailable as exc:
        # FhirAuthError's message names the status: a token the FHIR server no longer takes ends the session.
        if any("answered 401" in why for why in exc.keys.values()):
            raise AppError(401, "Session expired", "The FHIR server no longer accepts this sign-in.") from None
        raise AppError(502, "Record unavailable", "The FHIR server did not give the whole record.") from None
    except FhirError as exc:
        status = 401 if getattr(exc, "status", None) == 401 else 502
        raise AppError(status, "Record unavailable", "The FHIR server refused or failed the request.") from None
    knowledge: Knowledge = request.app.state.knowledge
    result = await run_in_threadpool(partial(evaluate_record, gathered.record, knowledge, as_of))
    return HTMLResponse(timeline_page(result), headers=_PAGE_HEADERS)
