"""Finding: what a rule concluded for one patient and program, with its evidence; every rendering starts here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property

from fhirsvc.lot.engine import Line
from fhirsvc.terminology.programs import Guideline, Indicator, Status, Suggestion

# A finding's id is a UUID derived from what the finding is (patient, program, rule, outcome, evidence): the same
# finding on the same evidence keeps its id across calls, hooks and doors. Draft orders (order-select, order-sign)
# count by what they plan, never by their client-local ids: a draft of a drug already in the recorded evidence (a
# renewal) adds nothing, a draft of another drug adds that drug. It is the CDS card's uuid (so feedback and
# "don't show again" attach to the finding) and the write-back identifier (so re-running never writes a second copy).
_NAMESPACE = uuid.UUID("5b0f3c8e-2f4a-4c55-9d1e-6f1c2a7b9e01")


@dataclass(slots=True)  # built per result: not frozen, for speed (see fhirsvc/facts.py)
class Measurement:
    """A lab result in the measure's canonical unit; `value` None for coded or "<" results without a number."""

    ref: str
    date: date
    value: float | None
    unit: str
    comparator: str | None
    not_detected: bool
    shown: str  # as reported, e.g. "2.5 log10 copies/mL" or "<20 copies/mL"
    converted: str = ""  # in the canonical unit when reported in another one, e.g. "8.0 %" for "64 mmol/mol"

    @property
    def reading(self) -> str:
        """The result as a clinician writes it: "8.4 %", or "64 mmol/mol (8.0 %)" when converted."""
        return f"{self.shown} ({self.converted})" if self.converted else self.shown


@dataclass
class Finding:
    """A rule's conclusion for one patient and program, with everything a card, write-back or report shows."""

    patient: str  # "Patient/<id>"
    as_of: date  # the evaluation date the finding holds on
    program: str
    rule: str
    outcome: str
    status: Status
    indicator: Indicator
    summary: str
    card: bool  # whether it warrants a card (and a write-back); "no-action" and withheld findings do not
    guideline: Guideline
    evidence: list[str] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    suggestions: dict[str, Suggestion] = field(default_factory=dict)  # by the program's suggestion key
    line: Line | None = None
    regimen: list[str] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)  # drug → class, for the regimen's drugs
    drafts: dict[str, list[str]] = field(default_factory=dict)  # evidence that is a draft order → its drugs
    planned_drugs: frozenset[str] = frozenset()  # drugs only the draft orders in the evidence bring

    @cached_property
    def id(self) -> str:
        """Read by every rendering of an actionable finding (card, suggestions, links, write-back, worklist), and
        computed only then: most findings are "no-action" and never need one. A finding is not changed after it is
        made (`dataclasses.replace` makes a new one), so the id is computed once."""
        recorded = sorted(ref for ref in self.evidence if ref not in self.drafts)
        planned = [f"planned:{drug}" for drug in sorted(self.planned_drugs)]
        key = "|".join([self.patient, self.program, self.rule, self.outcome, *recorded, *planned])
        return str(uuid.uuid5(_NAMESPACE, key))


def derived_id(finding_id: str, part: str) -> str:
    """A stable id for one part of a finding's rendering (a suggestion, a write-back resource)."""
    return str(uuid.uuid5(uuid.UUID(finding_id), part))
