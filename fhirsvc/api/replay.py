"""Replay protection for CDS client JWTs: each jti is accepted once until its token expires (stored, so every
worker and restart sees it)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.exc import IntegrityError

from fhirsvc.store.db import Store
from fhirsvc.store.models import SeenJti

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
