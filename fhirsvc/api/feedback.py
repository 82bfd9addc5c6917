"""CDS Hooks feedback (spec §Feedback): store outcomes, hide overridden cards, count per rule for metrics."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from fhirsvc.api.client_jwt import CdsClientIdentity
from fhirsvc.cds.models import Card
from fhirsvc.fhir.urls import normalise_base_url
from fhirsvc.findings import Finding, derived_id
from fhirsvc.store.db import Store
from fhirsvc.store.repository import (
    UNKNOWN,
    CardScope,
    FeedbackSaved,
    now,
    record_issued_cards,
    save_feedback,
    suppressed,
)

# The client of every call with FHIRSVC_CDS_AUTH=off (no JWT, so no `iss`): all unauthenticated callers are one client.
AUTH_OFF_CLIENT = "urn:fhirsvc:cds-auth-off"
# The server identity of a call without fhirServer (prefetch only): the patient ids are the client's, so its `iss`
# is their namespace.
PREFETCH_ONLY = "urn:fhirsvc:prefetch-only:"
MAX_USER_ID = 256  # issued_cards.user_id and feedback.user_id


def client_of(identity: CdsClientIdentity | None) -> str:
    return identity.iss if identity is not None else AUTH_OFF_CLIENT


def card_scope(identity: CdsClientIdentity | None, fhir_server: str | None, patient: str, user_id: object) -> CardScope:
    """Whom a call's cards are shown to: the client, the server identity (normalised fhirServer, or the client's
    namespace when there is none), the patient ("Patient/<id>") and the clinician (context.userId)."""
    client = client_of(identity)
    server = PREFETCH_ONLY + client
    if fhir_server:
        # Not a base URL: nothing was fetched from it, the patient ids are the client's (the namespace above).
        with contextlib.suppress(ValueError):
            server = normalise_base_url(fhir_server)
    user = user_id if isinstance(user_id, str) and user_id else UNKNOWN
    if len(user) > MAX_USER_ID:  # the column's width; a digest keeps distinct clinicians distinct
        user = "sha256:" + hashlib.sha256(user.encode()).hexdigest()
    return CardScope(client=client, server=server, patient=patient, user=user)


class OverrideReason(BaseModel):
    reason: dict[str, Any] | None = None
    userComment: str | None = None


class AcceptedSuggestion(BaseModel):
    id: str


class FeedbackItem(BaseModel):
    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: str = Field(min_length=1)
    acceptedSuggestions: list[AcceptedSuggestion] = Field(default_factory=list)
    overrideReason: OverrideReason | None = None


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1)


def parse_feedback(body: Any) -> list[dict[str, Any]]:
    """The spec's `{"feedback": [...]}`, or a bare item (HAPI's server binds one Feedback object)."""
    items = body.get("feedback") if isinstance(body, dict) and "feedback" in body else [body]
    if not isinstance(items, list) or not items:
        raise ValueError("feedback must be a non-empty list of feedback items")
    try:
        return [FeedbackItem.model_validate(item).model_dump(exclude_none=True) for item in items]
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise ValueError(f"feedback.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def store_feedback(store: Store, service_id: str, client: str, items: list[dict[str, Any]]) -> FeedbackSaved:
    """Store the items on cards issued to `client`; the others are ignored (answered 200 all the same: a refusal
    would tell a client which uuids were issued to others)."""
    with store.session() as session:
        return save_feedback(session, service_id, client, items)


def filter_and_record(
    store: Store,
    service_id: str,
    scope: CardScope,
    findings: list[tuple[Card, Finding]],
    suppress_days: int,
    every_clinician: bool,
) -> list[Card]:
    """Drop cards overridden with a reason within the suppression period for this scope; give the others their
    audience's uuid and remember them, and to whom."""
    with store.connection() as connection:
        since = now() - timedelta(days=suppress_days)
        hidden = suppressed(connection, scope, (f.id for _, f in findings), since, every_clinician)
        shown = [(card, finding) for card, finding in findings if finding.id not in hidden]
        for card, finding in shown:
            card.uuid = card_uuid(finding.id, scope)
        issued = ((c.uuid, f.id, f.program, f.rule, c.summary) for c, f in shown)
        record_issued_cards(connection, service_id, scope, issued)
    return [card for card, _ in shown]


def card_uuid(finding_id: str, scope: CardScope) -> str:
    """The card's uuid: the finding's id for this client, server and clinician. Stable across calls and hooks, but
    distinct per audience, so feedback (which names only the uuid) says whose card it was, and no client can name
    another's card."""
    return derived_id(finding_id, f"card|{scope.client}|{scope.server}|{scope.user}")
