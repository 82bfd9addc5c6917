"""Program definitions (mappings/programs/*.yaml) as validated models; one file = one disease program."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from fhirsvc.terminology.rule_params import RuleParams

# add-on-evaluation: add an agent for a reason other than failure of the line (organ protection in diabetes).
Status = Literal[
    "second-line-evaluation", "next-line-evaluation", "add-on-evaluation", "monitor", "data-needed", "no-action"
]
Indicator = Literal["info", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRef(_Strict):
    """A code with the source it was verified in; `verified: false` marks a code we could not check."""

    system: str
    code: str
    display: str = ""
    source: str | None = None
    verified: bool = True
    heading: bool = Field(
        default=False,
        description="An ICD-10-CM category kept on purpose although it is not a billable leaf (older records).",
    )

    @property
    def key(self) -> str:
        return f"{self.system}|{self.code}"


class CodeSet(_Strict):
    """Codes listed inline and/or taken from ValueSet expansions copied into mappings/valuesets/."""

    source: str
    codes: list[CodeRef] = Field(default_factory=list)
    valuesets: list[str] = Field(default_factory=list, description="File names under mappings/valuesets/.")

    @cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.codes)


class Scope(_Strict):
    """When a patient belongs to the program: a diagnosis, or treatment that is unambiguous without one."""

    diagnosis: CodeSet
    treatment_classes: list[str] = Field(default_factory=list)


class InlineDrug(_Strict):
    """A drug a program needs that the shared catalog lacks (e.g. a program defined only in YAML)."""

    name: str
    drug_class: str = Field(alias="class")
    rxnorm: str | None = None
    products: list[str] = Field(default_factory=list)
    source: str
    verified: bool = False


class LateAddition(_Strict):
    """Drugs that join the current line when added within `joins_within_days` of its start (Hess 2021)."""

    drugs: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)
    joins_within_days: int = Field(ge=0)


class DosingInterval(_Strict):
    """How long one dose, cycle or course keeps drugs current (the labelled interval to the next one)."""

    drugs: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)
    days: int = Field(ge=1)
    grace_days: int | None = Field(default=None, ge=0, description="Late doses still on schedule; else the default.")
    source: str


class Coverage(_Strict):
    """How long a record with no recorded end keeps a drug current when nothing newer is on file."""

    source: str
    fill_days: int = Field(default=90, ge=1, description="One fill of an order that states repeats, not supply.")
    order_days: int | None = Field(
        default=90, ge=1, description="An open order that states neither supply nor refills; None: until ended."
    )
    statement_days: int | None = Field(
        default=None, ge=1, description="An open statement after its last assertion; None: until it is ended."
    )
    grace_days: int = Field(default=30, ge=0, description="Late refills that still continue the drug.")
    renewal_days: int | None = Field(
        default=None,
        ge=1,
        description="A record stopped or completed without an end date, stop reason or stated supply covers the time "
        "until the program's next record when that comes within this many days (a renewed order is marked stopped "
        "without an end); None: such a record covers its own day.",
    )
    intervals: list[DosingInterval] = Field(default_factory=list)

    def interval_days(self, classes: dict[str, str]) -> dict[str, tuple[int, int]]:
        """Drug → (interval days, grace days) for the drugs of `classes`; a drug entry wins over its class."""
        by_class: dict[str, tuple[int, int]] = {}
        by_drug: dict[str, tuple[int, int]] = {}
        for interval in self.intervals:
            value = (interval.days, self.grace_days if interval.grace_days is None else interval.grace_days)
            by_class.update((d, value) for d, c in classes.items() if c in interval.classes)
            by_drug.update((d, value) for d in interval.drugs)
        return by_class | by_drug


class Indication(_Strict):
    """When a drug counts toward the program: its diagnosis active around the exposure, or its reason names it."""

    source: str
    margin_days: int = Field(
        default=90, ge=0, description="Treatment this long before onset (or after abatement) still counts."
    )


class LineSettings(_Strict):
    regimen_window_days: int = Field(default=28, ge=0)
    era_gap_days: int = Field(default=90, ge=0, description="Refill gap that still continues a drug era.")
    discontinuation_gap_days: int | None = Field(default=None, ge=1)
    new_line_on: Literal["class-change", "drug-change"] = "class-change"
    new_line_on_drop: bool = True
    ignore_classes: list[str] = Field(default_factory=list)
    substitutions: list[list[str]] = Field(default_factory=list, description="Interchangeable drugs (one slot).")
    gap_exempt_classes: list[str] = Field(default_factory=list, description="Oral continuous drugs (TKIs).")
    late_additions: list[LateAddition] = Field(default_factory=list)
    core_classes: list[str] = Field(
        default_factory=list, description="A regimen left without one of these classes is incomplete (HIV anchors)."
    )
    min_regimen_drugs: int = Field(default=1, ge=1, description="Fewer drugs left is an incomplete regimen.")
    coverage: Coverage | None = Field(default=None, description="None: a record without an end stays current.")
    administrations: bool = Field(
        default=True,
        description="False: MedicationAdministrations are not regimen records (an inpatient dose of an outpatient "
        "therapy, e.g. sliding-scale insulin in hospital, starts no line).",
    )


class ObservationSpec(_Strict):
    """A named measure: its codes, canonical unit ("coded" for coded results) and named coded values."""

    display: str
    unit: str
    source: str
    codes: list[CodeRef]
    valuesets: list[str] = Field(default_factory=list, description="File names under mappings/valuesets/.")
    log10_codes: list[CodeRef] = Field(default_factory=list)
    text_patterns: list[str] = Field(default_factory=list, description="Lower-case phrases in code.text.")
    values: dict[str, CodeSet] = Field(default_factory=dict, description="Named coded answers.")
    decimals: int | None = Field(
        default=None, ge=0, le=3, description="Decimals a clinician writes in the canonical unit (HbA1c 1, eGFR 0)."
    )

    @cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(c.key for c in [*self.codes, *self.log10_codes])

    @cached_property
    def log10_keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.log10_codes)


class Guideline(_Strict):
    label: str
    url: HttpUrl
    citation: str


class Suggestion(_Strict):
    """A card suggestion that creates one resource; the service fills `subject` and references."""

    label: str
    description: str
    is_recommended: bool = False
    resource: dict[str, Any]


class FlagCriterion(_Strict):
    """One way a flag holds: an active condition from a named code set, or the latest result vs a bound.

    `persisting_days`: the latest result and every result back to one at least that many days older are all out of
    bounds (chronicity, e.g. KDIGO CKD "> 3 months"). A condition counts only when one of `backed_by` holds and
    none of `contradicted_by` does (a CKD stage 1-2 code needs albuminuria); with `history`, a resolved or inactive
    diagnosis counts too (ASCVD is for life). `cite` words the trigger for a card:
    {ref}, {since}, {value}, {date} (the latest result) are filled in.
    """

    condition: str | None = None
    observation: str | None = None
    below: float | None = None
    at_least: float | None = None
    within_days: int | None = Field(default=None, ge=1)
    persisting_days: int | None = Field(default=None, ge=1)
    backed_by: list[FlagCriterion] = Field(default_factory=list)
    contradicted_by: list[FlagCriterion] = Field(default_factory=list)
    cite: str | None = None
    source: str | None = None
    history: bool = Field(
        default=False, description="Resolved or inactive diagnoses count too (a past myocardial infarction or stroke)."
    )

    def nested(self) -> list[FlagCriterion]:
        return [self, *(c for inner in [*self.backed_by, *self.contradicted_by] for c in inner.nested())]


class Flag(_Strict):
    label: str
    any_of: list[FlagCriterion]
    source: str | None = None


class When(_Strict):
    """Conditions (all must hold) that make a recommendation apply; evaluated by the rule engine."""

    line_classes_any: list[str] = Field(default_factory=list)
    line_classes_none: list[str] = Field(default_factory=list)
    line_drugs_any: list[str] = Field(default_factory=list)
    line_drugs_none: list[str] = Field(default_factory=list)
    flags_any: list[str] = Field(default_factory=list)
    flags_all: list[str] = Field(default_factory=list)
    flags_none: list[str] = Field(default_factory=list)
    observation_present: str | None = None
    observation_absent: str | None = None
    cards_any: list[str] = Field(default_factory=list, description="Earlier rules of which one shows a card.")
    cards_none: list[str] = Field(default_factory=list, description="Earlier rules none of which shows a card.")
    genes_wild_type: list[str] = Field(default_factory=list, description="Gene codes all recorded as absent.")


class Recommendation(_Strict):
    text: str
    when: When | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return {"text": value} if isinstance(value, str) else value


class Outcome(_Strict):
    status: Status
    indicator: Indicator = "info"
    summary: str = Field(max_length=139)
    recommendations: list[Recommendation] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        # YAML has no list splat: a shared list included by alias arrives nested; flatten it.
        if isinstance(value, dict) and isinstance(value.get("recommendations"), list):
            flat: list[Any] = []
            for item in value["recommendations"]:
                flat.extend(item if isinstance(item, list) else [item])
            value = {**value, "recommendations": flat}
        return value

    suggestions: list[str] = Field(default_factory=list)
    card: bool = True


class Rule(_Strict):
    id: str
    kind: str
    title: str
    guideline: Guideline
    params: RuleParams = Field(
        default_factory=RuleParams, description="Typed by the rule kind's parameter model when the program loads."
    )
    outcomes: dict[str, Outcome]
    line_end_label: str | None = Field(default=None, description="Why a line ended when this rule fired on it.")
    suppressed_by: list[str] = Field(
        default_factory=list, description="Rules whose card, when shown, makes this rule's card redundant."
    )


class StepTherapy(_Strict):
    """Which drugs a payer usually covers only after a documented first-line trial, and what such a request holds.

    Payer-neutral: the guideline order of therapy, not any insurer's policy. `applies: false` says on purpose that
    the program has no step therapy (e.g. oncology, where lines follow progression, not a payer's order).
    """

    applies: bool = True
    source: str
    guideline: Guideline | None = None
    first_line_drugs: list[str] = Field(default_factory=list)
    first_line_classes: list[str] = Field(default_factory=list)
    next_line_drugs: list[str] = Field(default_factory=list)
    next_line_classes: list[str] = Field(default_factory=list)
    min_trial_days: int = Field(default=90, ge=1, le=3650, description="Shortest first-line trial a request shows.")
    intolerance_counts: bool = Field(
        default=True, description="A first-line drug stopped for intolerance stands in for a full trial."
    )
    insurer_asks: list[str] = Field(default_factory=list, description="What a prior authorization request holds.")

    @model_validator(mode="after")
    def _complete(self) -> StepTherapy:
        if self.applies and not (
            (self.first_line_drugs or self.first_line_classes)
            and (self.next_line_drugs or self.next_line_classes)
            and self.guideline is not None
        ):
            raise ValueError("step_therapy: name first-line and next-line drugs or classes and a guideline")
        return self

    def first_line(self, drug: str, classes: dict[str, str]) -> bool:
        return drug in self.first_line_drugs or classes.get(drug) in self.first_line_classes

    def next_line(self, drug: str, classes: dict[str, str]) -> bool:
        return drug in self.next_line_drugs or classes.get(drug) in self.next_line_classes


class Program(_Strict):
    id: str
    title: str
    catalog_condition: str
    scope: Scope
    drugs: list[InlineDrug] = Field(default_factory=list)
    drug_aliases: dict[str, list[str]] = Field(default_factory=dict)
    lines: LineSettings
    indication: Indication = Field(default_factory=lambda: Indication(source="default margin"))
    observations: dict[str, ObservationSpec] = Field(default_factory=dict)
    conditions: dict[str, CodeSet] = Field(default_factory=dict)
    flags: dict[str, Flag] = Field(default_factory=dict)
    parameters: dict[str, float] = Field(default_factory=dict)
    general_triggers: bool = Field(default=True, description="Apply mappings/triggers.yaml rules too.")
    rules: list[Rule]
    suggestions: dict[str, Suggestion] = Field(default_factory=dict)
    override_reasons: list[CodeRef] = Field(default_factory=list)
    step_therapy: StepTherapy | None = Field(default=None, description="None: not described for this program.")

    @model_validator(mode="after")
    def _references_resolve(self) -> Program:
        rule_ids = [rule.id for rule in self.rules]
        if len(set(rule_ids)) != len(rule_ids):
            raise ValueError(f"duplicate rule ids in {self.id}")
        for flag_name, flag in self.flags.items():
            for criterion in (c for top in flag.any_of for c in top.nested()):
                if criterion.condition and criterion.condition not in self.conditions:
                    raise ValueError(f"flag {flag_name}: unknown condition set {criterion.condition!r}")
                if criterion.observation and criterion.observation not in self.observations:
                    raise ValueError(f"flag {flag_name}: unknown observation {criterion.observation!r}")
        for rule in self.rules:
            unknown = [r for r in rule.suppressed_by if r not in rule_ids]
            if unknown:
                raise ValueError(f"rule {rule.id}: suppressed_by names unknown rules {unknown}")
            earlier = rule_ids[: rule_ids.index(rule.id)]
            for outcome in rule.outcomes.values():
                for recommendation in outcome.recommendations:
                    when = recommendation.when
                    named = [f for f in (when.flags_any + when.flags_all + when.flags_none if when else [])]
                    unknown_flags = [f for f in named if f not in self.flags]
                    if unknown_flags:
                        raise ValueError(f"rule {rule.id}: a recommendation names unknown flags {unknown_flags}")
                    later = [r for r in (when.cards_any + when.cards_none if when else []) if r not in earlier]
                    if later:
                        raise ValueError(f"rule {rule.id}: a recommendation depends on {later}, not earlier rules")
                    variant = self.observations.get("genetic_variant")
                    if when and when.genes_wild_type and (variant is None or "absent" not in variant.values):
                        raise ValueError(
                            f"rule {rule.id}: genes_wild_type reads observation genetic_variant and its value set "
                            "absent, which the program does not define"
                        )
                    observed = [o for o in ((when.observation_present, when.observation_absent) if when else ()) if o]
                    unknown_observations = [o for o in observed if o not in self.observations]
                    if unknown_observations:
                        raise ValueError(
                            f"rule {rule.id}: a recommendation names unknown observations {unknown_observations}"
                        )
                missing = [s for s in outcome.suggestions if s not in self.suggestions]
                if missing:
                    raise ValueError(f"rule {rule.id}: unknown suggestions {missing}")
        return self
