"""A trusted CDS client's public keys: a configured JWK Set, or one fetched from its jwks_url and cached."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from fhirsvc.config import CdsClientConfig
from fhirsvc.fhir.urls import normalise_base_url

log = logging.getLogger(__name__)

JWKS_MIN_REFRESH_SECONDS = 60.0  # an unknown kid refetches an issuer's JWKS at most once a minute
JWKS_MAX_AGE_SECONDS = 3600.0  # a key removed from a JWKS (rotation, compromise) stops working within the hour
JWKS_TIMEOUT = httpx.Timeout(2.0)
JWKS_MAX_BYTES = 512 * 1024


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
        """Whether a token's `jku` header may stand. It is never dereferenced (SSRF, key substitution): a client
        registered by jwks_url must name that URL (compared in normalised form); for a client with an inline JWKS
        the header is ignored, and its keys stay the configured ones."""
        if self.jwks_url is None:
            return True
        if not isinstance(jku, str):
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
