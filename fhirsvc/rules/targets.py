"""Rule kinds on measures and comorbidities: `latest-above-target`, `comorbidity-preference`, `drug-below-floor`."""

from __future__ import annotations

from pydantic import Field, model_validator

from fhirsvc.findings import Finding, Measurement
from fhirsvc.rules.base import FlagHit, ProgramContext, format_number, make_finding
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import (
    DrugClassName,
    DrugName,
    FlagName,
    ObservationName,
    ParamGroup,
    RuleParams,
)


class LatestAboveTargetParams(RuleParams):
    """`latest-above-target`: the measure, its default target, the look-back window and the time on the line."""

    observation: ObservationName
    target: float
    lookback_days: int = Field(ge=1)
    min_days_on_line: int = Field(ge=0)
    plausible_from: float | None = Field(
        default=None, description="Below this a result is questioned (outcome `implausible`), not judged."
    )

    def conditional_outcomes(self) -> frozenset[str]:
        return frozenset({"implausible"}) if self.plausible_from is not None else frozenset()


class ComorbidityIndication(ParamGroup):
    """A comorbidity flag and the classes it calls for, in order of preference."""

    flag: FlagName
    classes: list[DrugClassName] = Field(min_length=1)
    first_only: bool = Field(default=False, description="Name only the first usable class.")


class ComorbidityPreferenceParams(RuleParams):
    """`comorbidity-preference`: the indications, the flags that close a class, and how a card names a class."""

    indications: list[ComorbidityIndication] = Field(min_length=1)
    class_gates: dict[DrugClassName, FlagName] = Field(
        default_factory=dict, description="A class never proposed while its flag holds."
    )
    class_names: dict[DrugClassName, str] = Field(default_factory=dict)
    observation: ObservationName | None = Field(default=None, description="A measure shown as context.")


class DrugBelowFloorParams(RuleParams):
    """`drug-below-floor`: the drugs, the measure, the floors to continue and to start, and how recent is recent."""

    drugs: list[DrugName] = Field(min_length=1)
    observation: ObservationName
    contraindicated_below: float
    start_below: float
    within_days: int = Field(ge=1)
    new_within_days: int = Field(ge=0)

    @model_validator(mode="after")
    def _start_floor_not_below_floor(self) -> DrugBelowFloorParams:
        if self.start_below < self.contraindicated_below:
            floor = self.contraindicated_below
            raise ValueError(f"start_below {self.start_below} is below contraindicated_below {floor}")
        return self


def latest_above_target(rule: Rule, params: LatestAboveTargetParams, ctx: ProgramContext) -> Finding:
    """The latest on-treatment result within a look-back window at or above target, after enough time on the line.

    ADA: metformin for ≥ 3 months and the latest HbA1c ≥ the patient's target → add an agent. A patient's active
    Goal for the same measure replaces the default target. A result dated on or before the line's first day is the
    line's baseline (shown for context), never an on-treatment result: the drug cannot have acted on it yet.
    """
    observation = params.observation
    spec = ctx.program.observations[observation]
    target = params.target
    lookback = params.lookback_days
    min_days = params.min_days_on_line
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    goal = next((g for g in ctx.facts.goals if g.measure & spec.keys), None)
    if goal is not None:
        target = goal.value
    extra = [goal.ref] if goal else []
    measured = [m for m in ctx.measurements(observation) if m.value is not None]
    before = [m for m in measured if m.date <= line.start and (line.start - m.date).days <= lookback]
    baseline = before[-1] if before else None
    on_line = [m for m in measured if m.date > line.start and (ctx.as_of - m.date).days <= lookback]
    values: dict[str, object] = {
        "target": format_number(target, spec.decimals),
        "baseline_note": f" (baseline {baseline.reading})" if baseline else "",
    }
    context = [baseline] if baseline else []
    if not on_line:
        outcome = "awaiting" if (ctx.as_of - line.start).days < min_days else "no-result"
        return make_finding(rule, ctx, outcome, values, context, line, extra)
    latest = on_line[-1]
    days = (latest.date - line.start).days
    values |= {"value": _beside_target(latest, target, spec.decimals), "date": latest.date.isoformat(), "days": days}
    plausible_from = params.plausible_from
    if latest.value is not None and plausible_from is not None and latest.value < plausible_from:
        outcome = "implausible"
    elif latest.value is not None and latest.value >= target:
        outcome = "above" if days >= min_days else "too-early"
    else:
        outcome = "at-target"
    return make_finding(rule, ctx, outcome, values, [*context, latest], line, extra)


def _beside_target(measured: Measurement, target: float, decimals: int | None) -> str:
    """The result as written, with one more decimal where rounding would print it as the target it differs from
    ("7.04 %, target < 7.0 %" rather than "7.0 %, target < 7.0 %")."""
    value = measured.value
    if value is None or decimals is None or value == target:
        return measured.reading
    if format_number(value, decimals) != format_number(target, decimals):
        return measured.reading
    return f"{format_number(value, decimals + 1)} {measured.unit}"


def _indications(params: ComorbidityPreferenceParams) -> list[tuple[str, list[str], bool]]:
    """(flag, classes in order of preference, whether only the first usable class is named) per indication."""
    return [(i.flag, list(i.classes), i.first_only) for i in params.indications]


def _cited(ctx: ProgramContext, flag: str, hit: FlagHit) -> str:
    label = ctx.program.flags[flag].label
    return f"{label[:1].upper()}{label[1:]} ({hit.cite})"


def comorbidity_preference(rule: Rule, params: ComorbidityPreferenceParams, ctx: ProgramContext) -> Finding:
    """Organ protection: a comorbidity that calls for a drug class the regimen lacks, whatever the HbA1c says.

    ADA: heart failure → SGLT2 inhibitor; CKD → SGLT2 inhibitor, a GLP-1 RA when one cannot be used; ASCVD → GLP-1
    RA or SGLT2 inhibitor. The kidney gates come first: a class whose gate flag holds (no SGLT2 inhibitor start
    below the labelled eGFR) is never proposed, so the card cannot both name it and advise against it. An
    indication already served by a class in the regimen, or by the class chosen for an earlier one, asks nothing.
    """
    program = ctx.program
    gates = params.class_gates
    names = params.class_names
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    hits = ctx.flag_hits()
    present = [ind for ind in _indications(params) if ind[0] in hits]
    if not present:
        return make_finding(rule, ctx, "not-indicated", {}, [], line)
    taking = {ctx.classes.get(d) for d in ctx.program_drugs_active()}
    unserved = [ind for ind in present if not taking & set(ind[1])]
    if not unserved:
        return make_finding(rule, ctx, "covered", {}, [], line)
    chosen: list[str] = []
    served: list[str] = []
    blocked: list[tuple[str, list[str]]] = []
    for flag, classes, first_only in unserved:
        usable = [c for c in classes if gates.get(c) not in hits]
        if not usable:
            blocked.append((flag, classes))
        elif any(c in chosen for c in usable):
            served.append(flag)
        else:
            chosen += usable[:1] if first_only else usable
            served.append(flag)
    closed = sorted({gates[c] for _, classes, _ in unserved for c in classes if gates.get(c) in hits})
    cited = served or [flag for flag, _ in blocked]
    measured: list[Measurement] = []
    refs: list[str] = []
    for name in [*cited, *closed]:
        measured += hits[name].measurements
        refs += hits[name].refs
    if params.observation is not None:  # the HbA1c, shown because the advice does not depend on it
        measured += [m for m in ctx.measurements(params.observation) if m.value is not None][-1:]
    reason = _cited(ctx, cited[0], hits[cited[0]])
    if len(cited) > 1:
        reason += " and " + ", ".join(program.flags[f].label for f in cited[1:])
    unique = list({id(m): m for m in measured}.values())
    if chosen:
        values = {"reason": reason, "agents": " or ".join(names.get(c, c) for c in chosen)}
        return make_finding(rule, ctx, "indicated", values, unique, line, refs)
    gate = hits[closed[0]]
    values = {
        "reason": reason,
        "agents": " or ".join(names.get(c, c) for c in blocked[0][1]),
        "gate": gate.cite,
    }
    return make_finding(rule, ctx, "not-startable", values, unique, line, refs)


def drug_below_floor(rule: Rule, params: DrugBelowFloorParams, ctx: ProgramContext) -> Finding:
    """A drug of the regimen with the latest result under its labelled floor.

    Metformin (FDA label, 2016 safety communication): contraindicated at eGFR < 30; starting it at eGFR 30-45 is not
    recommended, judged on the latest result on or before the start, for a drug started within `new_within_days`
    or ordered now (a draft order starts today).
    """
    drugs = set(params.drugs)
    observation = params.observation
    spec = ctx.program.observations[observation]
    floor = params.contraindicated_below
    start_floor = params.start_below
    within = params.within_days
    new_within = params.new_within_days
    line = ctx.current_line
    on = [d for d in ctx.program_drugs_active() if d in drugs]
    if line is None or not on:
        return make_finding(rule, ctx, "not-on-drug", {})
    measured = [m for m in ctx.measurements(observation) if m.value is not None]
    recent = [m for m in measured if (ctx.as_of - m.date).days <= within]
    if not recent:
        return make_finding(rule, ctx, "no-result", {}, [], line)
    drug_refs = [e.ref for e in ctx.facts.active_on(ctx.as_of) if e.drugs & set(on)]  # the records to change
    values: dict[str, object] = {
        "drug": ", ".join(on),
        "floor": format_number(floor, spec.decimals),
        "start_floor": format_number(start_floor, spec.decimals),
    }
    latest = recent[-1]
    if latest.value is not None and latest.value < floor:
        values |= {"value": format_number(latest.value, spec.decimals), "date": latest.date.isoformat()}
        return make_finding(rule, ctx, "contraindicated", values, [latest], line, drug_refs)
    start = min(e.start for e in ctx.eras if e.drug in on and e.active_on(ctx.as_of))
    prior = [m for m in recent if m.date <= start]
    if prior and (ctx.as_of - start).days <= new_within:
        at_start = prior[-1]
        if at_start.value is not None and at_start.value < start_floor:
            values |= {
                "value": format_number(at_start.value, spec.decimals),
                "date": at_start.date.isoformat(),
                "started": start.isoformat(),
            }
            return make_finding(rule, ctx, "not-to-start", values, [at_start], line, drug_refs)
    return make_finding(rule, ctx, "within-label", {}, [latest], line)
