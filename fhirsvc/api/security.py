"""Trust and hostile input: CDS client JWTs, the outbound FHIR server allowlist, the request body size limit.

CDS Hooks 2.0 "Trusting CDS Clients" (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients): every call carries
`Authorization: Bearer <JWT>` signed by the client; the service checks `iss` against an allowlist, the signature
against that issuer's JWKS, `aud` against the endpoint invoked, `exp`/`iat`, and keeps `jti` to refuse replays.
Refusals are a bare 401 (cds-hooks/docs best-practices.md: no reason that would help an attacker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import jwt
import orjson
from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, delete, insert
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirsvc.api.logs import annotate
from fhirsvc.api.responses import operation_outcome
from fhirsvc.config import CdsClientConfig, Settings
from fhirsvc.fhir.urls import normalise_base_url
from fhirsvc.store.db import Store
from fhirsvc.store.models import SeenJti

log = logging.getLogger(__name__)

JWKS_MIN_REFRESH_SECONDS = 60.0  # an unknown kid refetches an issuer's JWKS at most once a minute
JWKS_MAX_AGE_SECONDS = 3600.0  # a key removed from a JWKS (rotation, compromise) stops working within the hour
JWKS_TIMEOUT = httpx.Timeout(2.0)
JWKS_MAX_BYTES = 512 * 1024
PURGE_INTERVAL_SECONDS = 300.0  # expired jti rows are deleted at most this often, piggybacked on a check
MAX_JTI_LENGTH = 256  # the seen_jti.jti column


class Refused(Exception):
    """A client JWT that is not accepted; the reason is for our log only, never for the client."""


class Unauthorized(Exception):
    """Raised by the auth dependency; the app answers a bare 401 (see `unauthorized`)."""


async def unauthorized(_: Request, __: Exception) -> Response:
    """401 with an empty body: which check failed is not disclosed (RFC 6750 §3 challenge only)."""
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class CdsClientIdentity:
    """Who called: the verified issuer and the token's jti."""

    iss: str
    jti: str


def _index(jwks: Any) -> dict[str, dict[str, Any]]:
    """Signature keys of a JWK Set by kid (keys without a kid cannot be selected; `use: enc` ones are not ours)."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWK Set")
    return {
        key["kid"]: key
        for key in keys
        if isinstance(key, dict) and isinstance(key.get("kid"), str) and key.get("use", "sig") == "sig"
    }


class IssuerKeys:
    """One trusted client's public keys by kid: a configured JWKS, or one fetched from its jwks_url on demand."""

    def __init__(self, client: CdsClientConfig, clock: Callable[[], float]) -> None:
        self.iss = client.iss
        self.jwks_url = client.jwks_url
        self.keys: dict[str, dict[str, Any]] = _index(client.jwks) if client.jwks is not None else {}
        self.fetched_at: float | None = None
        self._clock = clock
        self._lock = asyncio.Lock()

    def accepts_jku(self, jku: object) -> bool:
        """A `jku` header must name the registered JWKS URL (never dereference another one: SSRF, key substitution)."""
        if not isinstance(jku, str) or self.jwks_url is None:
            return False
        try:
            return normalise_base_url(jku) == self.jwks_url
        except ValueError:
            return False

    async def key(self, kid: str, http: httpx.AsyncClient) -> dict[str, Any] | None:
        if self.jwks_url is None:
            return self.keys.get(kid)
        async with self._lock:  # concurrent calls with a new kid share one fetch
            now = self._clock()
            age = None if self.fetched_at is None else now - self.fetched_at
            if kid in self.keys and age is not None and age < JWKS_MAX_AGE_SECONDS:
                return self.keys[kid]
            if age is None or age >= JWKS_MIN_REFRESH_SECONDS:
                # Stamped before fetching: a JWKS server that fails is also asked at most once a minute.
                self.fetched_at = now
                try:
                    self.keys = _index(await _fetch_jwks(http, self.jwks_url))
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("JWKS of CDS client %s unavailable (%s); keeping cached keys", self.iss, exc)
            return self.keys.get(kid)


async def _fetch_jwks(http: httpx.AsyncClient, url: str) -> Any:
    response = await http.get(url, headers={"Accept": "application/json"})
    if response.status_code != 200:
        raise ValueError(f"JWKS URL answered {response.status_code}")
    if len(response.content) > JWKS_MAX_BYTES:
        raise ValueError("JWKS too large")
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ValueError("JWKS is not JSON") from None


# Built once: every authenticated call runs them (Core statements; the ORM's unit of work cost more than the SQL).
_PURGE_JTI = delete(SeenJti).where(SeenJti.expires_at < bindparam("now"))
# A jti reused long after its token expired is not a replay of a live token.
_FORGET_EXPIRED_JTI = delete(SeenJti).where(SeenJti.jti == bindparam("jti"), SeenJti.expires_at < bindparam("now"))
_REMEMBER_JTI = insert(SeenJti)


def remember_jti(store: Store, issuer: str, jti: str, expires_at: datetime, purge: bool) -> bool:
    """Record a jti until its token expires; False when it was already there (a replay)."""
    now = datetime.now(UTC)
    try:
        with store.connection() as connection:
            if purge:
                connection.execute(_PURGE_JTI, {"now": now})
            else:
                connection.execute(_FORGET_EXPIRED_JTI, {"now": now, "jti": jti})
            connection.execute(_REMEMBER_JTI, {"jti": jti, "issuer": issuer, "expires_at": expires_at})
    except IntegrityError:
        return False
    return True


class CdsAuthenticator:
    """Verifies CDS client JWTs against the FHIRSVC_CDS_CLIENTS allowlist (one per app)."""

    def __init__(
        self, settings: Settings, store: Store, http: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.algorithms = frozenset(settings.cds_algorithms)
        self.leeway = settings.cds_leeway_seconds
        self.issuers = {client.iss: IssuerKeys(client, clock) for client in settings.cds_clients}
        self.store = store
        self.http = http
        self._clock = clock
        self._next_purge = 0.0

    async def verify(self, token: str, audience: str) -> CdsClientIdentity:
        """The caller's identity, or Refused. Checks run cheapest first; nothing is fetched for an unlisted iss."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused("malformed JWT") from None
        alg = header.get("alg")
        # RFC 8725 §3.1: the algorithm comes from our configuration, never from the token (`none`, HS* are refused).
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Refused(f"algorithm {alg!r} not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Refused("no kid in the JWT header")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None or not isinstance(iss, str):
            raise Refused("issuer not on the allowlist")
        if "jku" in header and not issuer.accepts_jku(header["jku"]):
            raise Refused("jku not on the allowlist")
        jwk = await issuer.key(kid, self.http)
        if jwk is None:
            raise Refused("unknown kid")
        if jwk.get("alg", alg) != alg:
            raise Refused("key is registered for another algorithm")
        try:
            claims = jwt.decode(
                token,
                jwt.PyJWK(jwk, algorithm=alg),
                algorithms=[alg],
                # `aud` is the URL of the endpoint invoked; health systems type it in, often with a trailing slash
                # (the CDS Hooks sandbox sends `jku`; Epic types `aud` by hand): the same endpoint either way.
                audience=[audience, audience + "/"],
                issuer=iss,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise Refused(type(exc).__name__) from None
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise Refused("unusable jti")
        # Kept until the token can no longer pass the exp check (exp + leeway).
        expires_at = datetime.fromtimestamp(int(claims["exp"]) + self.leeway, UTC)
        purge = self._clock() >= self._next_purge
        if purge:
            self._next_purge = self._clock() + PURGE_INTERVAL_SECONDS
        if not await run_in_threadpool(remember_jti, self.store, iss, jti, expires_at, purge):
            raise Refused("replayed jti")
        return CdsClientIdentity(iss=iss, jti=jti)


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="cdsClientJwt",  # OpenAPI component names allow no spaces
    description="CDS Hooks 2.0 client JWT (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients)",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> CdsClientIdentity:
    settings: Settings = request.app.state.settings
    authenticator: CdsAuthenticator = request.app.state.cds_auth
    try:
        if credentials is None:
            raise Refused("no bearer token")
        # The exact external URL of the endpoint: FHIRSVC_PUBLIC_URL, since behind a proxy our own view differs.
        identity = await authenticator.verify(credentials.credentials, settings.public_base + request.url.path)
    except Refused as exc:
        annotate(request, auth="refused", auth_reason=str(exc)[:120])
        raise Unauthorized from None
    annotate(request, client=identity.iss)
    return identity


async def cds_client(request: Request, credentials: Credentials) -> CdsClientIdentity | None:
    """Dependency for service and feedback calls: the verified client (None with FHIRSVC_CDS_AUTH=off)."""
    if request.app.state.settings.cds_auth == "off":
        return None
    return await _authenticate(request, credentials)


async def discovery_client(request: Request, credentials: Credentials) -> CdsClientIdentity | None:
    """Dependency for discovery: open unless FHIRSVC_CDS_AUTH_DISCOVERY=true (CDS Hooks 2.0 lets either be)."""
    settings: Settings = request.app.state.settings
    if settings.cds_auth == "off" or not settings.cds_auth_discovery:
        return None
    return await _authenticate(request, credentials)


def fhir_server_allowed(url: str, allowed: list[str]) -> bool:
    """True when `url` is one of the FHIRSVC_FHIR_SERVERS (already normalised; https or listed loopback)."""
    try:
        return normalise_base_url(url) in allowed
    except ValueError:
        return False


class BodyTooLarge(Exception):
    """The request body passed FHIRSVC_MAX_BODY_BYTES."""


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before they are parsed, chunked ones included."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            # Without Content-Length (chunked), count as the bytes arrive and stop at the limit.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = operation_outcome(413, f"request body larger than {self.max_bytes} bytes", code="too-costly")
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)
