"""SMART app sessions: PKCE, state, the signed session cookie, and launches and tokens kept server-side."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# A launch must come back from the authorization server within ten minutes (a user may have to log in first).
PENDING_SECONDS = 600.0
# Bounded memory: past this many launches or sessions the oldest are dropped (they can launch again).
MAX_ENTRIES = 10_000


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2 S256: BASE64URL(SHA256(ASCII(code_verifier)))."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_pkce_verifier() -> str:
    """RFC 7636 §4.1: 43 to 128 unreserved characters; 64 random bytes give 86."""
    return secrets.token_urlsafe(64)


def new_state() -> str:
    """An unguessable `state` (RFC 6749 §10.12), at least 122 bits as SMART App Launch asks."""
    return secrets.token_urlsafe(32)


class CookieSigner:
    """`<session id>.<expiry>.<HMAC-SHA256>`: the cookie names a server-side session and cannot be forged or
    prolonged; it holds no token."""

    def __init__(self, secret: bytes, max_age: int, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.max_age = max_age
        self._clock = clock

    def __repr__(self) -> str:  # never the key
        return f"CookieSigner(max_age={self.max_age})"

    def _mac(self, payload: str) -> str:
        return _b64url(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def sign(self, session_id: str) -> str:
        payload = f"{session_id}.{int(self._clock()) + self.max_age}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, value: str) -> str | None:
        """The session id, or None when the cookie is malformed, forged or expired."""
        parts = value.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        session_id, expires, mac = parts
        try:
            expected = self._mac(f"{session_id}.{expires}")
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected.encode("ascii")):
            return None
        return session_id if self._clock() < int(expires) else None


@dataclass(frozen=True)
class PendingLaunch:
    """What the callback needs from the launch that sent the user to the authorization server."""

    iss: str
    token_endpoint: str
    verifier: str = field(repr=False)
    finding: str | None
    created: float


@dataclass(frozen=True)
class AppSession:
    """One signed-in user's view of one patient; the access token never leaves the server."""

    iss: str
    patient: str
    access_token: str = field(repr=False)
    finding: str | None
    expires: float


class SessionStore:
    """Launches keyed by `state` (each taken once) and sessions keyed by an opaque id, in memory, bounded.

    In memory: a process restart signs everyone out, and `serve --workers N` needs the launch, callback and page of
    one user on one worker (sticky sessions), which a single-worker deployment has by itself.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pending: OrderedDict[str, PendingLaunch] = OrderedDict()
        self._sessions: OrderedDict[str, AppSession] = OrderedDict()

    def now(self) -> float:
        return self._clock()

    def add_launch(self, state: str, launch: PendingLaunch) -> None:
        self._pending[state] = launch
        while len(self._pending) > MAX_ENTRIES:
            self._pending.popitem(last=False)

    def take_launch(self, state: str) -> PendingLaunch | None:
        """The launch `state` was issued for, once; None for an unknown, used or expired state."""
        launch = self._pending.pop(state, None)
        if launch is None or self._clock() - launch.created > PENDING_SECONDS:
            return None
        return launch

    def add_session(self, session: AppSession) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = session
        while len(self._sessions) > MAX_ENTRIES:
            self._sessions.popitem(last=False)
        return session_id

    def session(self, session_id: str) -> AppSession | None:
        found = self._sessions.get(session_id)
        if found is not None and self._clock() >= found.expires:
            del self._sessions[session_id]
            return None
        return found
