"""Rule kinds on measures and comorbidities: `latest-above-target`, `comorbidity-preference`, `drug-below-floor`."""

from __future__ import annotations

from typing import Any

from fhirsvc.findings import Finding, Measurement
from fhirsvc.rules.base import FlagHit, ProgramContext, format_number, make_finding, rule_kind
from fhirsvc.terminology.programs import Rule


@rule_kind("latest-above-target")
def latest_above_target(rule: Rule, ctx: ProgramContext) -> Finding:
    """The latest on-treatment result within a look-back window at or above target, after enough time on the line.

    ADA: metformin for ≥ 3 months and the latest HbA1c ≥ the patient's target → add an agent. A patient's active
    Goal for the same measure replaces the default target. A result dated on or before the line's first day is the
    line's baseline (shown for context), never an on-treatment result: the drug cannot have acted on it yet.
    """
    program = ctx.program
    observation = str(program.param(rule, "observation"))
    spec = program.observations[observation]
    target = float(program.param(rule, "target"))
    lookback = int(program.param(rule, "lookback_days"))
    min_days = int(program.param(rule, "min_days_on_line"))
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
    plausible_from = float(program.param(rule, "plausible_from")) if "plausible_from" in rule.params else None
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


def _indications(rule: Rule, ctx: ProgramContext) -> list[tuple[str, list[str], bool]]:
    """(flag, classes in order of preference, whether only the first usable class is named) per indication."""
    raw: list[dict[str, Any]] = list(ctx.program.param(rule, "indications"))
    return [(str(i["flag"]), [str(c) for c in i["classes"]], bool(i.get("first_only", False))) for i in raw]


def _cited(ctx: ProgramContext, flag: str, hit: FlagHit) -> str:
    label = ctx.program.flags[flag].label
    return f"{label[:1].upper()}{label[1:]} ({hit.cite})"


@rule_kind("comorbidity-preference")
def comorbidity_preference(rule: Rule, ctx: ProgramContext) -> Finding:
    """Organ protection: a comorbidity that calls for a drug class the regimen lacks, whatever the HbA1c says.

    ADA: heart failure → SGLT2 inhibitor; CKD → SGLT2 inhibitor, a GLP-1 RA when one cannot be used; ASCVD → GLP-1
    RA or SGLT2 inhibitor. The kidney gates come first: a class whose gate flag holds (no SGLT2 inhibitor start
    below the labelled eGFR) is never proposed, so the card cannot both name it and advise against it. An
    indication already served by a class in the regimen, or by the class chosen for an earlier one, asks nothing.
    """
    program = ctx.program
    gates = {str(c): str(f) for c, f in dict(program.param(rule, "class_gates")).items()}
    names = {str(c): str(n) for c, n in dict(program.param(rule, "class_names")).items()}
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    hits = ctx.flag_hits()
    present = [ind for ind in _indications(rule, ctx) if ind[0] in hits]
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
    if "observation" in rule.params:  # the HbA1c, shown because the advice does not depend on it
        measured += [m for m in ctx.measurements(str(program.param(rule, "observation"))) if m.value is not None][-1:]
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


@rule_kind("drug-below-floor")
def drug_below_floor(rule: Rule, ctx: ProgramContext) -> Finding:
    """A drug of the regimen with the latest result under its labelled floor.

    Metformin (FDA label, 2016 safety communication): contraindicated at eGFR < 30; starting it at eGFR 30-45 is not
    recommended, judged on the latest result on or before the start, for a drug started within `new_within_days`
    or ordered now (a draft order starts today).
    """
    program = ctx.program
    drugs = {str(d) for d in program.param(rule, "drugs")}
    observation = str(program.param(rule, "observation"))
    spec = program.observations[observation]
    floor = float(program.param(rule, "contraindicated_below"))
    start_floor = float(program.param(rule, "start_below"))
    within = int(program.param(rule, "within_days"))
    new_within = int(program.param(rule, "new_within_days"))
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
