"""CDS client JWTs: who may call the CDS services and feedback, and the dependencies that check it.

CDS Hooks 2.0 "Trusting CDS Clients" (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients): every call carries
`Authorization: Bearer <JWT>` signed by the client; the service checks `iss` against an allowlist, the signature
against that issuer's JWKS, `aud` against the endpoint invoked, `exp`/`iat` (and a token lifetime of at most
FHIRSVC_CDS_MAX_TOKEN_LIFETIME, the spec's five minutes by default), and keeps `jti` per issuer to refuse replays.
Refusals are a bare 401 (cds-hooks/docs best-practices.md: no reason that would help an attacker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import jwt
from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fhirsvc.api.issuer_keys import IssuerKeys
from fhirsvc.api.logs import annotate
from fhirsvc.api.replay import remember_jti
from fhirsvc.config import Settings
from fhirsvc.store.db import Store

log = logging.getLogger(__name__)

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


class CdsAuthenticator:
    """Verifies CDS client JWTs against the FHIRSVC_CDS_CLIENTS allowlist (one per app)."""

    def __init__(
        self, settings: Settings, store: Store, http: httpx.AsyncClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.algorithms = frozenset(settings.cds_algorithms)
        self.leeway = settings.cds_leeway_seconds
        self.max_lifetime = settings.cds_max_token_lifetime
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
        # `jku` is OPTIONAL (CDS Hooks 2.0 #trusting-cds-clients: the client MAY name its JWK Set URL there; RFC 7515
        # §4.1.2), and the CDS Hooks sandbox always sends one. A client registered by jwks_url must name that URL (or
        # nothing); for an inline JWKS the header is ignored: nothing is ever fetched for such a client, and the key
        # must be one of those configured.
        if "jku" in header and not issuer.accepts_jku(header["jku"]):
            raise Refused("jku is not the registered jwks_url")
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
        self._check_lifetime(claims)
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise Refused("unusable jti")
        # Kept until the token can no longer pass the exp check (exp + leeway): at most the maximum lifetime plus twice
        # the leeway, so the replay table stays small.
        expires_at = datetime.fromtimestamp(int(claims["exp"]) + self.leeway, UTC)
        purge = self._clock() >= self._next_purge
        if purge:
            self._next_purge = self._clock() + PURGE_INTERVAL_SECONDS
        if not await run_in_threadpool(remember_jti, self.store, iss, jti, expires_at, purge):
            raise Refused("replayed jti")
        return CdsClientIdentity(iss=iss, jti=jti)

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """At most FHIRSVC_CDS_MAX_TOKEN_LIFETIME: CDS Hooks 2.0 #trusting-cds-clients wants `exp` no more than five
        minutes ahead, so that a stolen token is soon useless.

        `exp - iat` is read on the client's own clock. `exp - now` compares two clocks and gets the skew allowance, so
        a client whose clock runs a little ahead is not refused; PyJWT's refusal of an `iat` beyond now + leeway bounds
        it too, but this bound does not rest on that.
        """
        exp, iat = float(claims["exp"]), float(claims["iat"])  # both checked numeric by PyJWT
        if exp - iat > self.max_lifetime:
            raise Refused("token lifetime (exp - iat) over the maximum")
        if exp - time.time() > self.max_lifetime + self.leeway:
            raise Refused("exp too far in the future")


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
