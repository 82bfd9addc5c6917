"""General switch triggers for every program: `intolerance`, `pregnancy-contraindication`, `interaction`."""

from __future__ import annotations

from datetime import date

from fhirsvc.rules.base import Assessment, Measurement, ProgramContext, make_assessment, rule_kind
from fhirsvc.terminology.programs import Rule

NOT_TOLERATED = "407563006"  # SNOMED "Treatment not tolerated" (mCODE TreatmentTerminationReasonVS)


@rule_kind("intolerance")
def intolerance(rule: Rule, ctx: ProgramContext) -> Assessment:
    """A drug of the line stopped as not tolerated, or an allergy/intolerance recorded to it, with no switch yet."""
    line = ctx.current_line or ctx.last_line
    if line is None:
        return make_assessment(rule, ctx, "no-therapy", {})
    events: list[tuple[date, str, frozenset[str]]] = []
    for exposure in ctx.facts.exposures:
        # Cheapest test first: this runs for every exposure of every program, and stop reasons are rare.
        if not exposure.stop_reasons or exposure.end is None or exposure.end > ctx.as_of:
            continue
        stopped = exposure.drugs & line.drugs
        if stopped and any(reason.code == NOT_TOLERATED for reason in exposure.stop_reasons):
            events.append((exposure.end, exposure.ref, frozenset(stopped)))
    for allergy in ctx.facts.allergies:
        named = allergy.drugs & line.drugs
        if named and (allergy.date is None or allergy.date <= ctx.as_of):
            events.append((allergy.date or line.start, allergy.ref, frozenset(named)))
    if not events:
        return make_assessment(rule, ctx, "none", {}, [], line)
    events.sort()
    since, _, _ = events[-1]
    culprits = frozenset().union(*(drugs for _, _, drugs in events))
    program_drugs = ctx.classes.keys()
    switched = any(e.start >= since and (e.drugs & program_drugs) - culprits for e in ctx.facts.started_by(ctx.as_of))
    values = {"drugs": ", ".join(sorted(culprits)), "date": since.isoformat()}
    outcome = "switched" if switched else "not-tolerated"
    return make_assessment(rule, ctx, outcome, values, [], line, [ref for _, ref, _ in events])


@rule_kind("pregnancy-contraindication")
def pregnancy_contraindication(rule: Rule, ctx: ProgramContext) -> Assessment:
    """Pregnancy (a Condition, or a recent pregnancy-status result) while the regimen holds a flagged drug."""
    program = ctx.program
    line = ctx.current_line
    if line is None:
        return make_assessment(rule, ctx, "no-therapy", {})
    recent = int(program.param(rule, "status_within_days"))
    evidence = [d.ref for d in ctx.diagnoses(str(program.param(rule, "conditions"))) if d.clinical_status == "active"]
    observation = str(program.param(rule, "observation"))
    used: list[Measurement] = []
    for lab in ctx.results(observation):
        if (ctx.as_of - lab.date).days <= recent and ctx.has_value(lab, observation, "pregnant"):
            used.append(ctx.as_measurement(lab))
    if not evidence and not used:
        return make_assessment(rule, ctx, "not-pregnant", {}, [], line)
    flagged = [d for d in ctx.program_drugs_active() if d in ctx.safety.pregnancy]
    if not flagged:
        return make_assessment(rule, ctx, "compatible", {}, used, line, evidence)
    advice = " ".join(f"{d}: {ctx.safety.pregnancy[d].advice}" for d in flagged)
    drug_refs = [e.ref for e in ctx.facts.exposures if e.drugs & set(flagged) and (e.end is None or e.end >= ctx.as_of)]
    values = {"drugs": ", ".join(flagged), "advice": advice}
    return make_assessment(rule, ctx, "contraindicated", values, used, line, evidence + drug_refs)


@rule_kind("interaction")
def interaction(rule: Rule, ctx: ProgramContext) -> Assessment:
    """A newly started drug that interacts with the current regimen (either side may be the new one)."""
    program = ctx.program
    new_within = int(program.param(rule, "new_within_days"))
    line = ctx.current_line
    if line is None:
        return make_assessment(rule, ctx, "no-therapy", {})
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
            return make_assessment(rule, ctx, "interacting", values, [], line, refs)
    return make_assessment(rule, ctx, "none", {}, [], line)
