"""A small SMART App Launch 2.x authorization server with a FHIR endpoint, for the app's browser tests.

It implements what the app relies on as https://hl7.org/fhir/smart-app-launch/app-launch.html requires:
discovery, /authorize (auto-approves a registered client and redirect URI, S256 only), /token (one-time codes bound
to the client, redirect URI and PKCE challenge; the launch context's patient and appContext in the answer), and a
read-only FHIR endpoint serving one bundle's resources to the bearer of an issued token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    patient: str
    app_context: str | None


@dataclass
class SmartServer:
    """State and knobs of the test server; `base` is set once it listens."""

    client_id: str
    redirect_uri: str
    resources: list[dict[str, Any]]
    patient: str
    base: str = ""
    launches: dict[str, str | None] = field(default_factory=dict)  # launch id -> appContext
    codes: dict[str, Grant] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    fhir_reads: int = 0
    # A real FHIR server (the HAPI test server) behind this one: reads and searches are passed on to it once the
    # bearer token is checked, as a SMART-enabled FHIR server guards its own data.
    upstream: str | None = None
    # Misbehaviours the app must catch.
    answer_wrong_state: bool = False
    expect_other_verifier: bool = False

    @property
    def fhir_base(self) -> str:
        return f"{self.base}/fhir"

    def new_launch(self, app_context: str | None = None) -> str:
        launch = secrets.token_urlsafe(8)
        self.launches[launch] = app_context
        return launch

    def refuse(self, why: str, status: int = 400) -> Response:
        self.refusals.append(why)
        return JSONResponse({"error": "invalid_grant", "error_description": why}, status_code=status)


def smart_app(server: SmartServer) -> FastAPI:
    app = FastAPI()

    @app.get("/fhir/.well-known/smart-configuration")
    def configuration() -> dict[str, Any]:
        return {
            "authorization_endpoint": f"{server.base}/authorize",
            "token_endpoint": f"{server.base}/token",
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "launch-standalone", "client-public", "context-ehr-patient"],
        }

    @app.get("/authorize")
    def authorize(request: Request) -> Response:
        q = request.query_params
        # RFC 6749 §4.1.2.1: never redirect to an unregistered URI; show the error instead.
        if q.get("client_id") != server.client_id or q.get("redirect_uri") != server.redirect_uri:
            server.refusals.append("redirect_uri")
            return PlainTextResponse("unregistered client or redirect URI", status_code=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return server.refuse("S256 PKCE is required")
        if q.get("aud") != server.fhir_base:
            return server.refuse("aud is not this FHIR server")
        scopes = set(q.get("scope", "").split())
        launch = q.get("launch")
        if launch is not None:
            if launch not in server.launches or "launch" not in scopes:
                return server.refuse("unknown launch")
            app_context = server.launches.pop(launch)
        elif "launch/patient" in scopes:
            app_context = None  # standalone: the "user" picks the one patient there is
        else:
            return server.refuse("no launch context")
        code = secrets.token_urlsafe(16)
        challenge = q.get("code_challenge", "")
        if server.expect_other_verifier:
            challenge = s256("a verifier the app never made")
        server.codes[code] = Grant(server.client_id, server.redirect_uri, challenge, server.patient, app_context)
        state = "forged-" + secrets.token_urlsafe(8) if server.answer_wrong_state else q.get("state", "")
        return RedirectResponse(f"{server.redirect_uri}?{urlencode({'code': code, 'state': state})}", 302)

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        grant_type, code, redirect_uri = form.get("grant_type"), form.get("code", ""), form.get("redirect_uri")
        code_verifier, client_id = form.get("code_verifier", ""), form.get("client_id")
        grant = server.codes.pop(code, None)  # one use only
        if grant_type != "authorization_code" or grant is None:
            return server.refuse("unknown code")
        if client_id != grant.client_id:
            return server.refuse("client_id", 401)
        if redirect_uri != grant.redirect_uri:
            return server.refuse("redirect_uri")
        if s256(code_verifier) != grant.challenge:
            return server.refuse("code_verifier")
        access_token = "tok-" + secrets.token_urlsafe(24)
        server.tokens.add(access_token)
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": "launch openid fhirUser patient/*.rs",
            "patient": grant.patient,
        }
        if grant.app_context is not None:
            body["appContext"] = grant.app_context
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "").removeprefix("Bearer ") in server.tokens

    def from_upstream(path: str, request: Request) -> Response:
        assert server.upstream is not None
        answer = httpx.get(
            f"{server.upstream}/{path}",
            params=list(request.query_params.multi_items()),
            headers={"Accept": "application/fhir+json"},
            timeout=30,
        )
        # Links in the answer name the upstream base: paging goes through this server too.
        body = answer.content.replace(server.upstream.encode(), server.fhir_base.encode())
        return Response(body, status_code=answer.status_code, media_type="application/fhir+json")

    @app.get("/fhir/{resource_type}/{resource_id}")
    def read(resource_type: str, resource_id: str, request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        server.fhir_reads += 1
        if server.upstream is not None:
            return from_upstream(f"{resource_type}/{resource_id}", request)
        for resource in server.resources:
            if resource["resourceType"] == resource_type and resource["id"] == resource_id:
                return JSONResponse(resource, media_type="application/fhir+json")
        return JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)

    @app.get("/fhir/{resource_type}")
    def search(resource_type: str, request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        server.fhir_reads += 1
        if server.upstream is not None:
            return from_upstream(resource_type, request)
        found = [r for r in server.resources if r["resourceType"] == resource_type]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
        }
        return JSONResponse(bundle, media_type="application/fhir+json")

    return app


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on 127.0.0.1:`port`; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
