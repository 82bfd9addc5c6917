"""Rule kinds on disease course: `progression` (coded disease status) and `monitoring-overdue`."""

from __future__ import annotations

from pydantic import Field

from fhirsvc.findings import Finding
from fhirsvc.rules.base import ProgramContext, make_finding
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import ObservationName, RuleParams, ValueSetOfObservation


class ProgressionParams(RuleParams):
    """`progression`: the coded disease-status measure and its answers that mean progression."""

    observation: ObservationName
    progression_values: ValueSetOfObservation


class MonitoringOverdueParams(RuleParams):
    """`monitoring-overdue`: the monitored measure and the longest gap between results on a line."""

    observation: ObservationName
    max_days: int = Field(ge=1)


def progression(rule: Rule, params: ProgressionParams, ctx: ProgramContext) -> Finding:
    """A progression result (mCODE disease status "worsened", RECIST progressive disease) during the line.

    Counts results dated after the current line started (or, off therapy, after the most recent line started):
    progression that led to the line does not count against it.
    """
    observation = params.observation
    value_set = params.progression_values
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


def monitoring_overdue(rule: Rule, params: MonitoringOverdueParams, ctx: ProgramContext) -> Finding:
    """No result of a monitored measure for more than `max_days` while a line has run longer than that.

    With no result since the line started the outcome is `never-recorded` (its own sentence: there is no date).
    """
    observation = params.observation
    max_days = params.max_days
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
