"""General switch triggers for every program: `intolerance`, `pregnancy-contraindication`, `interaction`."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from fhirsvc.findings import Finding, Measurement
from fhirsvc.lot.engine import Line
from fhirsvc.rules.base import ProgramContext, make_finding
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import ConditionSetName, ObservationName, RuleParams, ValueSetOfObservation

NOT_TOLERATED = "407563006"  # SNOMED "Treatment not tolerated" (mCODE TreatmentTerminationReasonVS)


class PregnancyParams(RuleParams):
    """`pregnancy-contraindication`: pregnancy diagnoses, the pregnancy-status measure and how recent it must be."""

    conditions: ConditionSetName
    observation: ObservationName
    status_within_days: int = Field(ge=1)
    pregnant_values: ValueSetOfObservation = Field(
        default="pregnant", description="The measure's coded answers that mean pregnant."
    )


class InteractionParams(RuleParams):
    """`interaction`: how recently one of the interacting drugs must have started (a planned order always counts)."""

    new_within_days: int = Field(ge=0)


def intolerance(rule: Rule, params: RuleParams, ctx: ProgramContext) -> Finding:
    """A drug of the line stopped as not tolerated, or an allergy/intolerance recorded to it, with no switch yet.

    When the line goes on without it (the other drugs still active, a complete regimen), the finding stays inside
    the line: a monitoring note, with the program's interchangeable drug (cisplatin -> carboplatin) when one exists.
    """
    line = ctx.current_line or ctx.last_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    counted: set[str] | None = None  # the program's exposures (indication applied), read only when needed
    events: list[tuple[date, str, frozenset[str]]] = []
    for exposure in ctx.facts.exposures:
        # Cheapest test first: this runs for every exposure of every program, and stop reasons are rare.
        if not exposure.stop_reasons or exposure.end is None or exposure.end > ctx.as_of:
            continue
        stopped = exposure.drugs & line.drugs
        if stopped and any(r.code == NOT_TOLERATED for r in exposure.stop_reasons):
            if counted is None:
                counted = {ref for era in ctx.eras for ref in era.refs}
            if exposure.ref in counted:
                events.append((exposure.end, exposure.ref, frozenset(stopped)))
    for allergy in ctx.facts.allergies:
        named = allergy.drugs & line.drugs
        if named and (allergy.date is None or allergy.date <= ctx.as_of):
            events.append((allergy.date or line.start, allergy.ref, frozenset(named)))
    if not events:
        return make_finding(rule, ctx, "none", {}, [], line)
    events.sort()
    since, _, _ = events[-1]
    culprits = frozenset().union(*(drugs for _, _, drugs in events))
    switched = any(era.start >= since and era.drug not in culprits for era in ctx.eras)
    values = {"drugs": ", ".join(sorted(culprits)), "date": since.isoformat()}
    refs = [ref for _, ref, _ in events]
    if switched:
        return make_finding(rule, ctx, "switched", values, [], line, refs)
    continuing = _line_goes_on(ctx, line, culprits)
    if not continuing:
        return make_finding(rule, ctx, "not-tolerated", values, [], line, refs)
    values["continuing"] = ", ".join(continuing)
    substitutes = _substitutes(ctx, culprits)
    if substitutes and "continues-substitute" in rule.outcomes:
        values["substitutes"] = " or ".join(substitutes)
        return make_finding(rule, ctx, "continues-substitute", values, [], line, refs)
    return make_finding(
        rule, ctx, "continues" if "continues" in rule.outcomes else "not-tolerated", values, [], line, refs
    )


def _line_goes_on(ctx: ProgramContext, line: Line, culprits: frozenset[str]) -> list[str]:
    """The line's other drugs still active today, when none of the culprits is and they form a whole regimen."""
    if ctx.current_line is not line:
        return []
    active = ctx.program_drugs_active()
    if any(d in culprits for d in active):
        return []  # still taking it: the intolerance is unresolved
    continuing = [d for d in active if d in line.drugs]
    settings = ctx.program.lines
    core = set(settings.core_classes)
    if core and not any(ctx.classes.get(d) in core for d in continuing):
        return []  # e.g. two NRTIs left without their anchor: an incomplete regimen needs a replacement
    if len(continuing) < settings.min_regimen_drugs:
        return []  # e.g. dolutegravir alone: monotherapy is no regimen
    return continuing


def _substitutes(ctx: ProgramContext, culprits: frozenset[str]) -> list[str]:
    """Drugs the program treats as interchangeable with a culprit (same line), never one not tolerated itself."""
    allergic = {d for allergy in ctx.facts.allergies for d in allergy.drugs}
    found: list[str] = []
    for group in ctx.program.lines.substitutions:
        if culprits & set(group):
            found += [d for d in group if d not in culprits and d not in allergic and d not in found]
    return found


def pregnancy_contraindication(rule: Rule, params: PregnancyParams, ctx: ProgramContext) -> Finding:
    """Pregnancy (a Condition, or a recent pregnancy-status result) while the regimen holds a flagged drug."""
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    recent = params.status_within_days
    evidence = [d.ref for d in ctx.diagnoses(params.conditions) if d.clinical_status == "active"]
    observation = params.observation
    used: list[Measurement] = []
    for lab in ctx.results(observation):
        if (ctx.as_of - lab.date).days <= recent and ctx.has_value(lab, observation, params.pregnant_values):
            used.append(ctx.as_measurement(lab))
    if not evidence and not used:
        return make_finding(rule, ctx, "not-pregnant", {}, [], line)
    flagged = [d for d in ctx.program_drugs_active() if d in ctx.safety.pregnancy]
    if not flagged:
        return make_finding(rule, ctx, "compatible", {}, used, line, evidence)
    advice = " ".join(f"{d}: {ctx.safety.pregnancy[d].advice}" for d in flagged)
    drug_refs = [e.ref for e in ctx.facts.exposures if e.drugs & set(flagged) and (e.end is None or e.end >= ctx.as_of)]
    values = {"drugs": ", ".join(flagged), "advice": advice}
    return make_finding(rule, ctx, "contraindicated", values, used, line, evidence + drug_refs)


def interaction(rule: Rule, params: InteractionParams, ctx: ProgramContext) -> Finding:
    """A newly started drug that interacts with the current regimen (either side may be the new one)."""
    new_within = params.new_within_days
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    active = ctx.facts.active_on(ctx.as_of)
    active_drugs = {d for e in active for d in e.drugs}
    program_drugs = active_drugs & ctx.classes.keys()
    for table in ctx.safety.interactions:
        victims = table.victims & program_drugs
        if table.perpetrator not in active_drugs or not victims:
            continue
        involved = [e for e in active if table.perpetrator in e.drugs or e.drugs & victims]
        newest = max(involved, key=lambda e: e.start)
        if newest.planned or (ctx.as_of - newest.start).days <= new_within:
            values = {"perpetrator": table.perpetrator, "victims": ", ".join(sorted(victims)), "effect": table.effect}
            refs = [e.ref for e in sorted(involved, key=lambda e: (table.perpetrator not in e.drugs, e.start))]
            return make_finding(rule, ctx, "interacting", values, [], line, refs)
    return make_finding(rule, ctx, "none", {}, [], line)
