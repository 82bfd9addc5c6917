"""CDS Hooks feedback (spec §Feedback): store outcomes, hide overridden cards, count per rule for metrics."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from fhirsvc.cds.models import Card
from fhirsvc.findings import Finding
from fhirsvc.store.db import Store
from fhirsvc.store.repository import now, record_issued_cards, save_feedback, suppressed


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


def store_feedback(store: Store, service_id: str, items: list[dict[str, Any]]) -> tuple[int, int]:
    with store.session() as session:
        return save_feedback(session, service_id, items)


def filter_and_record(
    store: Store, service_id: str, patient: str, findings: list[tuple[Card, Finding]], suppress_days: int
) -> list[Card]:
    """Drop cards overridden with a reason within the suppression period; remember the ones we answer with."""
    with store.connection() as connection:
        hidden = suppressed(connection, (c.uuid for c, _ in findings), now() - timedelta(days=suppress_days))
        shown = [(card, finding) for card, finding in findings if card.uuid not in hidden]
        record_issued_cards(connection, service_id, patient, ((c.uuid, f.program, f.rule, c.summary) for c, f in shown))
    return [card for card, _ in shown]
