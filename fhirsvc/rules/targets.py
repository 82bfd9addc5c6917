"""Rule kinds on a measure against a target: `latest-above-target` and `comorbidity-preference`."""

from __future__ import annotations

from fhirsvc.rules.base import Assessment, ProgramContext, make_assessment, number, rule_kind
from fhirsvc.terminology.programs import Rule


def _flag_refs(ctx: ProgramContext, names: list[str] | None = None) -> list[str]:
    flags = ctx.flags()
    return [ref for name, refs in flags.items() if names is None or name in names for ref in refs]


@rule_kind("latest-above-target")
def latest_above_target(rule: Rule, ctx: ProgramContext) -> Assessment:
    """The latest result within a look-back window at or above target, after enough time on the line.

    ADA: metformin for ≥ 3 months and the latest HbA1c ≥ the patient's target → add an agent. A patient's active
    Goal for the same measure replaces the default target.
    """
    program = ctx.program
    observation = str(program.param(rule, "observation"))
    target = float(program.param(rule, "target"))
    lookback = int(program.param(rule, "lookback_days"))
    min_days = int(program.param(rule, "min_days_on_line"))
    line = ctx.current_line
    if line is None:
        return make_assessment(rule, ctx, "no-therapy", {})
    keys = program.observations[observation].keys
    goal = next((g for g in ctx.facts.goals if g.measure & keys), None)
    if goal is not None:
        target = goal.value
    extra = ([goal.ref] if goal else []) + _flag_refs(ctx)
    recent = [m for m in ctx.measurements(observation) if m.value is not None and (ctx.as_of - m.date).days <= lookback]
    values: dict[str, object] = {"target": number(target)}
    if not recent:
        return make_assessment(rule, ctx, "no-result", values, [], line, extra)
    latest = recent[-1]
    days = (latest.date - line.start).days
    values |= {"value": number(latest.value), "date": latest.date.isoformat(), "days": days}
    if latest.value is not None and latest.value >= target:
        outcome = "above" if days >= min_days else "too-early"
    else:
        outcome = "at-target"
    return make_assessment(rule, ctx, outcome, values, [latest], line, extra)


@rule_kind("comorbidity-preference")
def comorbidity_preference(rule: Rule, ctx: ProgramContext) -> Assessment:
    """A comorbidity that calls for a drug class (ADA: HF/CKD/ASCVD → SGLT2i or GLP-1 RA) not in the regimen."""
    program = ctx.program
    wanted = [str(f) for f in program.param(rule, "flags")]
    preferred = {str(c) for c in program.param(rule, "preferred_classes")}
    line = ctx.current_line
    if line is None:
        return make_assessment(rule, ctx, "no-therapy", {})
    present = [f for f in wanted if f in ctx.flags()]
    if not present:
        return make_assessment(rule, ctx, "not-indicated", {}, [], line)
    if any(ctx.classes.get(d) in preferred for d in ctx.program_drugs_active()):
        return make_assessment(rule, ctx, "covered", {}, [], line)
    labels = [program.flags[f].label for f in present]
    conditions = ", ".join(labels)
    measured = ctx.measurements(str(program.param(rule, "observation"))) if "observation" in rule.params else []
    values = {"conditions": conditions[:1].upper() + conditions[1:]}
    return make_assessment(rule, ctx, "indicated", values, measured[-1:], line, _flag_refs(ctx, present))
