"""SMART Backend Services for the poller: client_credentials with a private_key_jwt assertion, as an httpx.Auth.

https://hl7.org/fhir/smart-app-launch/backend-services.html and client-confidential-asymmetric.html:

- the token endpoint comes from `{fhirBase}/.well-known/smart-configuration` (or FHIRSVC_SMART_TOKEN_URL, for
  servers that publish none, such as the HAPI test server);
- the assertion is a JWT signed with RS384 (RSA key) or ES384 (EC P-384 key), header `kid` and `typ: JWT`, claims
  `iss` = `sub` = client_id, `aud` = the token URL, `exp` no more than five minutes ahead, a unique `jti`;
- there are no refresh tokens: a new assertion is minted shortly before the access token's `expires_in` runs out,
  and once more when the FHIR server answers 401 (revoked, or expired early).

The token goes only to URLs under the FHIR base it was issued for (paging and Bulk Data file links elsewhere get
none). Neither the private key, the assertion nor the access token ever reaches a log line or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import stat
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhirsvc.config import Settings, require_tls_endpoint
from fhirsvc.fhir.errors import FhirError
from fhirsvc.fhir.urls import is_under, normalise_base_url

log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART: `exp` "SHALL be no more than five minutes in the future". The assertion is used at once; four minutes
# leave a minute for an authorization server whose clock runs behind ours.
ASSERTION_LIFETIME_SECONDS = 240
MAX_ASSERTION_LIFETIME_SECONDS = 300
# An access token is replaced this long before its expires_in runs out (at most a fifth of its lifetime).
REFRESH_MARGIN_SECONDS = 60.0
# expires_in is REQUIRED in a SMART token response; a server that leaves it out gets the recommended 5 minutes.
DEFAULT_EXPIRES_IN = 300
TOKEN_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
TOKEN_ATTEMPTS = 2  # Epic answers bare 400s/5xx now and then (cumulus-fhir-support): one more try, new jti
MIN_RSA_BITS = 2048


class SmartConfigError(ValueError):
    """The SMART settings or key file cannot be used (raised before anything is sent)."""


class SmartAuthError(FhirError):
    """Discovery or the token request failed; the message holds the status and the server's OAuth error code."""


@dataclass(frozen=True, repr=False)
class SigningKey:
    """Our private key, the kid it is registered under and the algorithm its type implies."""

    kid: str
    alg: str  # "RS384" or "ES384"
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(compare=False)

    def __repr__(self) -> str:  # never the key material
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.private_key.public_key(), self.kid, self.alg)


@dataclass(frozen=True)
class KeySet:
    """The key we sign with, and every public key we publish (the signing key's first)."""

    signing: SigningKey
    public: tuple[dict[str, Any], ...]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(key) for key in self.public]}


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def public_jwk(key: PublicKey, kid: str, alg: str) -> dict[str, Any]:
    """The public half only, built from the public key object (never by copying fields of a private JWK)."""
    if isinstance(key, rsa.RSAPublicKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"]}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a stable kid for a key that was given none."""
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def algorithm_for(key: PrivateKey | PublicKey) -> str:
    """RS384 for RSA, ES384 for EC P-384: the two algorithms SMART requires every client and server to support."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise SmartConfigError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise SmartConfigError(f"EC key on {key.curve.name}; ES384 needs a P-384 (secp384r1) key")
        return "ES384"
    raise SmartConfigError("the key must be RSA (RS384) or EC P-384 (ES384)")


def _jwk_key(jwk: dict[str, Any]) -> Any:
    text = json.dumps(jwk)
    try:
        if jwk.get("kty") == "RSA":
            return RSAAlgorithm.from_jwk(text)
        if jwk.get("kty") == "EC":
            return ECAlgorithm.from_jwk(text)
    except (jwt.InvalidKeyError, ValueError, KeyError, TypeError) as exc:
        raise SmartConfigError(f"unusable JWK (kid {jwk.get('kid')!r}): {type(exc).__name__}") from None
    raise SmartConfigError(f"JWK kty {jwk.get('kty')!r} is not supported (RSA or EC)")


def load_key_set(path: Path, kid: str | None = None) -> KeySet:
    """Read a PEM private key or a JSON JWK Set (or one JWK) and pick the signing key (by `kid` when given)."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise SmartConfigError(f"cannot read the SMART key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("SMART key file %s is readable by group or others; chmod 600 it", path)
    if data.lstrip().startswith(b"{"):
        return _from_jwks(data, kid, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SmartConfigError(f"{path} is neither an unencrypted PEM private key nor a JWK Set") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SmartConfigError(f"{path}: the key must be RSA or EC P-384")
    alg = algorithm_for(key)
    key_id = kid or thumbprint(public_jwk(key.public_key(), "-", alg))
    signing = SigningKey(key_id, alg, key)
    return KeySet(signing, (signing.public_jwk(),))


def _from_jwks(data: bytes, kid: str | None, path: Path) -> KeySet:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise SmartConfigError(f"{path} is not valid JSON") from None
    jwks = parsed.get("keys") if isinstance(parsed, dict) and "keys" in parsed else [parsed]
    if not isinstance(jwks, list) or not all(isinstance(k, dict) for k in jwks) or not jwks:
        raise SmartConfigError(f"{path}: expected a JWK Set {{'keys': [...]}} or a single JWK")
    signing: SigningKey | None = None
    public: list[dict[str, Any]] = []
    for jwk in jwks:
        key = _jwk_key(jwk)
        alg = algorithm_for(key)
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise SmartConfigError(f"JWK {jwk.get('kid')!r} declares alg {declared!r}; SMART clients use {alg}")
        pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
        key_id = jwk.get("kid") if isinstance(jwk.get("kid"), str) else thumbprint(public_jwk(pub, "-", alg))
        is_private = isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        if is_private and signing is None and (kid is None or key_id == kid):
            signing = SigningKey(key_id, alg, key)
            public.insert(0, signing.public_jwk())
        else:
            public.append(public_jwk(pub, key_id, alg))
    if signing is None:
        wanted = f" with kid {kid!r}" if kid else ""
        raise SmartConfigError(f"{path}: no private key{wanted} to sign with")
    return KeySet(signing, tuple(public))


@dataclass
class _Token:
    value: str
    refresh_at: float  # monotonic clock

    def __repr__(self) -> str:
        return f"_Token(refresh_at={self.refresh_at:.0f})"


class SmartBackendAuth(httpx.Auth):
    """Bearer tokens from a SMART Backend Services token endpoint, minted with a signed JWT assertion.

    Use it on the FHIR server's httpx.AsyncClient (e.g. `FhirClientPool.client(base, auth=...)`). Concurrent
    requests share one token and one mint; a 401 from the FHIR server re-mints once and repeats the request.
    """

    def __init__(
        self,
        fhir_base: str,
        client_id: str,
        key: SigningKey,
        scope: str,
        token_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id:
            raise SmartConfigError("a SMART client_id is required")
        self.fhir_base = normalise_base_url(fhir_base)
        self.client_id = client_id
        self.key = key
        self.scope = scope
        self._token_url = require_tls_endpoint(token_url) if token_url else None
        self._own_http = http is None
        # Its own client: the token endpoint may be on another host, and must never see the FHIR client's auth.
        self._http = http or httpx.AsyncClient(timeout=TOKEN_TIMEOUT, follow_redirects=False)
        self._clock = clock
        self._monotonic = monotonic
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.minted = 0  # tokens obtained (for tests and the poller's log)

    def __repr__(self) -> str:
        return f"SmartBackendAuth(fhir_base={self.fhir_base!r}, client_id={self.client_id!r}, key={self.key!r})"

    # httpx.Auth ---------------------------------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("SmartBackendAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # A caller's own Authorization header wins; URLs off the FHIR server never get our token.
        if "Authorization" in request.headers or not is_under(str(request.url), self.fhir_base):
            yield request
            return
        token = await self.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # Revoked, or expired before expires_in said: one new token, one more try; a second 401 stands.
            token = await self.access_token(refused=token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    # Tokens -------------------------------------------------------------------------------------------------------

    async def access_token(self, refused: str | None = None) -> str:
        """The cached token, or a new one when it is due for renewal or is the one the server just refused."""
        async with self._lock:
            cached = self._token
            fresh = cached is not None and self._monotonic() < cached.refresh_at and cached.value != refused
            if cached is not None and fresh:
                return cached.value
            self._token = await self._mint()
            return self._token.value

    def invalidate(self) -> None:
        self._token = None

    async def token_url(self) -> str:
        if self._token_url is None:
            self._token_url = await self._discover()
        return self._token_url

    async def _discover(self) -> str:
        """token_endpoint from .well-known/smart-configuration. Servers often advertise the rest wrongly
        (cumulus-fhir-support): only the token endpoint is needed, the rest is a hint in the log."""
        url = f"{self.fhir_base}/.well-known/smart-configuration"
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise SmartAuthError(f"SMART discovery failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise SmartAuthError(f"SMART discovery answered {response.status_code} ({url})")
        try:
            config = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise SmartAuthError("SMART discovery document is not JSON") from None
        endpoint = config.get("token_endpoint") if isinstance(config, dict) else None
        if not isinstance(endpoint, str):
            raise SmartAuthError("SMART discovery document has no token_endpoint")
        try:
            endpoint = require_tls_endpoint(endpoint)
        except ValueError as exc:
            raise SmartAuthError(f"unusable token_endpoint: {exc}") from None
        algs = config.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algs, list) and self.key.alg not in algs:
            log.warning("SMART server lists signing algorithms %s, not %s; trying anyway", algs, self.key.alg)
        return endpoint

    def assertion(self, token_url: str) -> str:
        """A client assertion for `token_url` (client-confidential-asymmetric.html, "Authenticating to the Token
        endpoint")."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(claims, self.key.private_key, algorithm=self.key.alg, headers=headers)

    async def _mint(self) -> _Token:
        url = await self.token_url()
        error: SmartAuthError | None = None
        for _attempt in range(TOKEN_ATTEMPTS):
            started = self._monotonic()
            form = {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self.assertion(url),  # a new jti on every attempt
            }
            try:
                response = await self._http.post(url, data=form, headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                error = SmartAuthError(f"token request failed: {type(exc).__name__}")
                continue
            if response.status_code == 200:
                token = _token_from(response, started)
                self.minted += 1
                log.info("SMART access token obtained for %s", self.fhir_base)
                return token
            error = SmartAuthError(f"token endpoint answered {response.status_code}{_oauth_error(response)}")
            if response.status_code not in (400, 429) and response.status_code < 500:
                break  # 401 invalid_client and the like: the same assertion would fail again
        assert error is not None
        raise error

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()


def _token_from(response: httpx.Response, started: float) -> _Token:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise SmartAuthError("token response is not JSON") from None
    if not isinstance(body, dict):
        raise SmartAuthError("token response is not a JSON object")
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise SmartAuthError("token response has no access_token")
    token_type = body.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise SmartAuthError(f"token_type {token_type!r} is not bearer")
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some servers send a string
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    # From when the request was sent: the server's clock started before the answer reached us.
    margin = min(REFRESH_MARGIN_SECONDS, float(expires_in) / 5)
    return _Token(value, started + float(expires_in) - margin)


def _oauth_error(response: httpx.Response) -> str:
    """RFC 6749 §5.2 `error` (and a short description): safe to log, it carries no secret."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return ""
    description = body.get("error_description")
    detail = f": {description[:200]}" if isinstance(description, str) else ""
    return f" ({body['error'][:64]}{detail})"


def smart_auth(settings: Settings, fhir_base: str, http: httpx.AsyncClient | None = None) -> SmartBackendAuth | None:
    """The poller's auth for `fhir_base` from FHIRSVC_SMART_* settings; None when no client_id is configured."""
    if settings.smart_client_id is None or settings.smart_private_key_file is None:
        return None
    keys = load_key_set(settings.smart_private_key_file, settings.smart_kid)
    return SmartBackendAuth(
        fhir_base,
        settings.smart_client_id,
        keys.signing,
        settings.smart_scope,
        token_url=settings.smart_token_url,
        http=http,
    )


__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "KeySet",
    "SigningKey",
    "SmartAuthError",
    "SmartBackendAuth",
    "SmartConfigError",
    "load_key_set",
    "smart_auth",
]
