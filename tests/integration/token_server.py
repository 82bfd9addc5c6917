"""A SMART Backend Services token endpoint for tests, checking client assertions exactly as the spec requires.

https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html ("Signature Verification") and
backend-services.html: the request is a form POST with `grant_type=client_credentials`, `scope`,
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion`; the assertion

- is signed with RS384 or ES384 (nothing else), with a `kid` that names a key in the client's registered JWKS and
  `typ: JWT`; a `jku`, if present, must be the registered JWKS URL;
- has `iss` = `sub` = the registered client_id, `aud` = this token URL, `exp` present and no more than five
  minutes in the future (and not past), and a `jti` never seen before (a replay is refused).

An accepted assertion gets the bearer token the protected HAPI endpoint wants. Every refusal is recorded with its
reason so tests can tell which check fired. Runs with uvicorn on a free loopback port in a thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.integration.hapi import free_port

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_LIFETIME = 300
TOKEN_PATH = "/auth/token"


class Refusal(Exception):
    def __init__(self, error: str, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.error, self.reason, self.status = error, reason, status


@dataclass
class RegisteredClient:
    client_id: str
    jwks: dict[str, Any]
    jwks_url: str | None = None


@dataclass
class TokenServer:
    """The token endpoint for one registered client; `access_token` is what it issues (HAPI's token)."""

    client: RegisteredClient
    access_token: str
    expires_in: int = 300
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    issued: int = 0
    refusals: list[str] = field(default_factory=list)
    seen_jti: dict[str, float] = field(default_factory=dict)
    scopes: list[str] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return f"http://{self.host}:{self.port}{TOKEN_PATH}"

    # The endpoint ---------------------------------------------------------------------------------------------

    async def token(self, request: Request) -> JSONResponse:
        try:
            if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                raise Refusal("invalid_request", "not a form post", 400)
            # parse_qs, not request.form(): that needs python-multipart, which the service does not.
            form = parse_qs((await request.body()).decode("ascii", errors="replace"), strict_parsing=False)
            if any(len(values) > 1 for values in form.values()):
                raise Refusal("invalid_request", "repeated parameter", 400)  # RFC 6749 §3.2
            scope = self.check({k: v[0] for k, v in form.items()})
        except Refusal as refusal:
            with self._lock:
                self.refusals.append(refusal.reason)
            return JSONResponse({"error": refusal.error}, status_code=refusal.status)
        with self._lock:
            self.issued += 1
            self.scopes.append(scope)
        body = {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in}
        return JSONResponse({**body, "scope": scope}, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def check(self, form: dict[str, str]) -> str:
        """The granted scope, or Refusal naming the first rule the request breaks."""
        if form.get("grant_type") != "client_credentials":
            raise Refusal("unsupported_grant_type", "grant_type is not client_credentials", 400)
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise Refusal("invalid_request", "wrong client_assertion_type", 400)
        scope = form.get("scope", "")
        if not scope.strip():
            raise Refusal("invalid_scope", "no scope", 400)
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise Refusal("invalid_client", "malformed assertion") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Refusal("invalid_client", f"alg {alg!r} not allowed")
        if header.get("typ") != "JWT":
            raise Refusal("invalid_client", "typ is not JWT")
        if "jku" in header and header["jku"] != self.client.jwks_url:
            raise Refusal("invalid_client", "jku is not the registered JWKS URL")
        kid = header.get("kid")
        jwk = next((k for k in self.client.jwks.get("keys", []) if k.get("kid") == kid), None)
        if not isinstance(kid, str) or jwk is None:
            raise Refusal("invalid_client", "kid not in the registered JWKS")
        if jwk.get("alg", alg) != alg:
            raise Refusal("invalid_client", "key registered for another alg")
        try:
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(jwk, algorithm=alg).key,
                algorithms=[alg],
                audience=self.token_url,
                issuer=self.client.client_id,
                options={"require": ["iss", "sub", "aud", "exp", "jti"], "strict_aud": True},
            )
        except jwt.InvalidSignatureError:
            raise Refusal("invalid_client", "bad signature") from None
        except jwt.PyJWTError as exc:
            raise Refusal("invalid_client", f"claims: {type(exc).__name__}") from None
        if claims["sub"] != self.client.client_id:
            raise Refusal("invalid_client", "sub is not the client_id")
        now = time.time()
        if not isinstance(claims["exp"], int) or claims["exp"] > now + MAX_LIFETIME:
            raise Refusal("invalid_client", "exp more than five minutes ahead")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise Refusal("invalid_client", "no jti")
        with self._lock:
            self.seen_jti = {j: exp for j, exp in self.seen_jti.items() if exp > now}
            if jti in self.seen_jti:
                raise Refusal("invalid_client", "jti replayed")
            self.seen_jti[jti] = float(claims["exp"])
        return scope

    # Running it -----------------------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> TokenServer:
        app = Starlette(routes=[Route(TOKEN_PATH, self.token, methods=["POST"])])
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="token-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"token server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
