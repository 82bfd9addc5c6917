"""GET /.well-known/jwks.json: our SMART Backend Services public keys, so an EHR can register us by URL.

Public parts only (built from the public key objects), each with `kid` and `alg`; a new key is published under a
new kid before it signs (rotation: keep the old public key in the JWK Set file until the EHR has the new one).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict

from fhirsvc.api.responses import OrjsonResponse, operation_outcome, outcome
from fhirsvc.config import Settings
from fhirsvc.fhir.auth import SmartConfigError, load_key_set

log = logging.getLogger(__name__)
router = APIRouter(tags=["SMART Backend Services"])

JWKS_MEDIA_TYPE = "application/json"
CACHE_SECONDS = 300  # EHRs cache JWKS; a rotated key shows within five minutes


class PublicJwk(BaseModel):
    """A public signature key (RFC 7517): RSA `n`/`e` or EC `crv`/`x`/`y`; never a private member."""

    model_config = ConfigDict(extra="forbid")

    kty: str
    kid: str
    alg: str
    use: str
    key_ops: list[str]
    n: str | None = None
    e: str | None = None
    crv: str | None = None
    x: str | None = None
    y: str | None = None


class JwkSet(BaseModel):
    keys: list[PublicJwk]


@lru_cache(maxsize=4)
def _public_jwks(path: str, modified_ns: int, size: int, kid: str | None) -> tuple[dict[str, Any], ...]:
    """Keyed by the file's mtime and size: a replaced key file is read again, an unchanged one never."""
    del modified_ns, size
    return load_key_set(Path(path), kid).public


def public_jwks(settings: Settings) -> dict[str, Any] | None:
    """The JWK Set to publish, or None when no SMART key is configured. Raises SmartConfigError."""
    path = settings.smart_private_key_file
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError as exc:
        raise SmartConfigError(f"cannot read the SMART key file {path}: {exc.strerror}") from None
    return {"keys": [dict(key) for key in _public_jwks(str(path), info.st_mtime_ns, info.st_size, settings.smart_kid)]}


@router.get(
    "/.well-known/jwks.json",
    response_model=JwkSet,
    responses={
        404: outcome("No SMART Backend Services key configured (FHIRSVC_SMART_PRIVATE_KEY_FILE)"),
        503: outcome("The configured key file cannot be read"),
    },
)
def jwks(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    try:
        body = public_jwks(settings)
    except SmartConfigError as exc:
        log.error("SMART key file unusable: %s", exc)
        return operation_outcome(503, "the SMART key is not available", code="exception")
    if body is None:
        return operation_outcome(404, "no SMART Backend Services key is configured", code="not-found")
    return OrjsonResponse(body, headers={"Cache-Control": f"public, max-age={CACHE_SECONDS}"})
