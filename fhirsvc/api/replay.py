"""Replay protection for CDS client JWTs: each (issuer, jti) once until its token expires, stored for every worker."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.exc import IntegrityError

from fhirsvc.store.db import Store
from fhirsvc.store.models import SeenJti

# Built once: every authenticated call runs them (Core statements; the ORM's unit of work cost more than the SQL).
_PURGE_JTI = delete(SeenJti).where(SeenJti.expires_at < bindparam("now"))
# A jti reused long after its token expired is not a replay of a live token.
_FORGET_EXPIRED_JTI = delete(SeenJti).where(
    SeenJti.issuer == bindparam("issuer"), SeenJti.jti == bindparam("jti"), SeenJti.expires_at < bindparam("now")
)
# A jti is unique only within its issuer (RFC 7519 §4.1.7): two clients may use the same one, and neither may lock
# the other out. seen_jti is unique on (issuer, jti), so the insert of a pair already there is the replay.
_REMEMBER_JTI = insert(SeenJti)


def remember_jti(store: Store, issuer: str, jti: str, expires_at: datetime, purge: bool) -> bool:
    """Record an issuer's jti until its token expires; False when that issuer already used it (a replay)."""
    now = datetime.now(UTC)
    try:
        with store.connection() as connection:
            if purge:
                connection.execute(_PURGE_JTI, {"now": now})
            else:
                connection.execute(_FORGET_EXPIRED_JTI, {"now": now, "issuer": issuer, "jti": jti})
            connection.execute(_REMEMBER_JTI, {"jti": jti, "issuer": issuer, "expires_at": expires_at})
    except IntegrityError:
        return False
    return True
