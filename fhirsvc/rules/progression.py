"""Rule kinds on disease course: `progression` (coded disease status) and `monitoring-overdue`."""

from __future__ import annotations

from fhirsvc.findings import Finding
from fhirsvc.rules.base import ProgramContext, make_finding, rule_kind
from fhirsvc.terminology.programs import Rule


@rule_kind("progression")
def progression(rule: Rule, ctx: ProgramContext) -> Finding:
    """A progression result (mCODE disease status "worsened", RECIST progressive disease) during the line.

    Counts results dated after the current line started (or, off therapy, after the most recent line started):
    progression that led to the line does not count against it.
    """
    program = ctx.program
    observation = str(program.param(rule, "observation"))
    value_set = str(program.param(rule, "progression_values"))
    line = ctx.current_line or ctx.last_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    found = [
        lab for lab in ctx.results(observation) if lab.date > line.start and ctx.has_value(lab, observation, value_set)
    ]
    if not found:
        return make_finding(rule, ctx, "no-progression", {}, [], line)
    latest = ctx.as_measurement(found[-1])
    values = {"date": latest.date.isoformat(), "value": latest.shown}
    return make_finding(rule, ctx, "progression", values, [latest], line)


@rule_kind("monitoring-overdue")
def monitoring_overdue(rule: Rule, ctx: ProgramContext) -> Finding:
    """No result of a monitored measure for more than `max_days` while a line has run longer than that.

    With no result since the line started the outcome is `never-recorded` (its own sentence: there is no date).
    """
    program = ctx.program
    observation = str(program.param(rule, "observation"))
    max_days = int(program.param(rule, "max_days"))
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    if (ctx.as_of - line.start).days <= max_days:
        return make_finding(rule, ctx, "on-track", {}, [], line)
    # Monitoring of this line: a result from before it started (another line, or another cancer) does not count.
    results = [lab for lab in ctx.results(observation) if lab.date >= line.start]
    latest = ctx.as_measurement(results[-1]) if results else None
    if latest is not None and (ctx.as_of - latest.date).days <= max_days:
        return make_finding(rule, ctx, "on-track", {"date": latest.date.isoformat()}, [latest], line)
    if latest is None:
        return make_finding(rule, ctx, "never-recorded", {"days": max_days}, [], line)
    values = {"date": latest.date.isoformat(), "days": max_days}
    return make_finding(rule, ctx, "overdue", values, [latest], line)
