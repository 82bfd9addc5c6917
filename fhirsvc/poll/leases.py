"""Leases that let several pollers share one store: per patient on PostgreSQL, one poller per server on SQLite.

PostgreSQL: every changed patient is claimed with an atomic upsert before it is evaluated, so of several pollers
(processes or hosts) on one server exactly one evaluates it; the others skip it. SQLite has no concurrent writers
worth the name (one write transaction at a time, https://www.sqlite.org/lockingv3.html), so there a poller holds a
lease on the whole server for as long as it runs and a second one is refused (`PollerBusy`).

An owner is "<host>:<pid>:<random>", one per process (tests name others; the random part tells apart containers
that share a host name and a pid); a lease left by a process of this host that no longer runs (killed, crashed) is
taken over at once rather than waited out.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from fhirsvc.store.db import Store
from fhirsvc.store.repository import claim_lease, lease_of, release_lease, take_over_lease

SERVER_WIDE = "*"  # the patient column of a whole-server lease (no patient id is "*")


class PollerBusy(Exception):
    """Another poller holds this server on a store that allows one poller at a time."""


def process_owner() -> str:
    return _owner_of(os.getpid())  # a forked child is another owner


@cache
def _owner_of(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"


def _gone(owner: str) -> bool:
    """True when `owner` is a process of this host that no longer runs (its lease can be taken at once)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user
        return False
    return False


@dataclass
class Leases:
    """One poller's leases on one store."""

    store: Store
    owner: str
    seconds: float

    @property
    def per_patient(self) -> bool:
        return self.store.engine.dialect.name != "sqlite"

    def hold_server(self, server: str, since: datetime) -> None:
        """On SQLite: take or renew the whole-server lease, or raise PollerBusy naming who holds it and until when."""
        if self.per_patient:
            return
        if self._claim(server, SERVER_WIDE, since):
            return
        with self.store.session() as session:
            holder = lease_of(session, server, SERVER_WIDE)
        who = holder.owner if holder else "another poller"
        until = holder.expires_at.isoformat(timespec="seconds") if holder else "?"
        raise PollerBusy(
            f"another poller ({who}) is polling this FHIR server on this SQLite store (lease until {until}); "
            "run one poller per SQLite store, or use a PostgreSQL store (FHIRSVC_STORE_URL) for several"
        )

    def release_server(self, server: str) -> None:
        if not self.per_patient:
            with self.store.session() as session:
                release_lease(session, server, SERVER_WIDE, self.owner, done=False)

    def claim_patient(self, server: str, patient: str, since: datetime) -> bool:
        """True: evaluate `patient` now. False: another poller is at it, or has already done it since `since`."""
        return not self.per_patient or self._claim(server, patient, since)

    def held_elsewhere(self, server: str, patient: str) -> bool:
        """After a refused claim: True when another poller is still evaluating `patient` (not finished yet)."""
        with self.store.session() as session:
            lease = lease_of(session, server, patient)
            return lease is not None and lease.done_at is None

    def finish_patient(self, server: str, patient: str, done: bool) -> None:
        if self.per_patient:
            with self.store.session() as session:
                release_lease(session, server, patient, self.owner, done)

    def _claim(self, server: str, patient: str, since: datetime) -> bool:
        with self.store.session() as session:
            if claim_lease(session, server, patient, self.owner, since, self.seconds):
                return True
            holder = lease_of(session, server, patient)
            if holder is not None and holder.done_at is None and _gone(holder.owner):
                return take_over_lease(session, server, patient, holder.owner, self.owner, self.seconds)
        return False
