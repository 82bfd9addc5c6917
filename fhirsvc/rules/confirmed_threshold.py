"""Rule kind `confirmed-threshold`: two consecutive results at or above a threshold after time on the line."""

from __future__ import annotations

from pydantic import Field, model_validator

from fhirsvc.findings import Finding, Measurement
from fhirsvc.rules.base import ProgramContext, format_number, make_finding, number
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import ObservationName, RuleParams


class ConfirmedThresholdParams(RuleParams):
    """`confirmed-threshold`: the measure, its failure threshold and suppression limit, and the time on the line."""

    observation: ObservationName
    threshold: float = Field(gt=0)
    suppressed_below: float = Field(ge=0)
    min_days_on_line: int = Field(ge=0)
    result_expected_after_days: int = Field(ge=0)

    @model_validator(mode="after")
    def _suppressed_below_threshold(self) -> ConfirmedThresholdParams:
        if self.suppressed_below > self.threshold:
            raise ValueError(f"suppressed_below {self.suppressed_below} is above threshold {self.threshold}")
        return self


def confirmed_threshold(rule: Rule, params: ConfirmedThresholdParams, ctx: ProgramContext) -> Finding:
    """DHHS-style virologic failure, generalised.

    Failure: the two most recent results on the current line are both ≥ threshold, on different days, both taken
    at least `min_days_on_line` after the line started (consecutive, so no suppressed result between them).
    One elevated result → repeat; confirmed detectable-but-below-threshold results → low-level monitoring.
    """
    threshold = params.threshold
    suppressed_below = params.suppressed_below
    min_days = params.min_days_on_line
    expected_after = params.result_expected_after_days
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    observation = params.observation
    # A result drawn on the line's first day is its baseline (drawn before the first dose), not a response to it.
    results = [m for m in ctx.measurements(observation) if m.date > line.start]
    base = {"threshold": number(threshold)}
    if not results:
        waited = (ctx.as_of - line.start).days
        outcome = "no-result" if waited >= expected_after else "awaiting-first-result"
        return make_finding(rule, ctx, outcome, base, [], line)

    def suppressed(m: Measurement) -> bool:
        return m.not_detected or m.comparator in ("<", "<=") or (m.value is not None and m.value < suppressed_below)

    def elevated(m: Measurement) -> bool:
        return not suppressed(m) and m.value is not None and m.value >= threshold

    def assessable(m: Measurement) -> bool:
        return (m.date - line.start).days >= min_days

    latest = results[-1]
    previous = results[-2] if len(results) >= 2 else None
    values = {
        **base,
        "value": format_number(latest.value, ctx.program.observations[observation].decimals)
        if latest.value is not None
        else latest.shown,
        "date": latest.date.isoformat(),
        "weeks": (latest.date - line.start).days // 7,
    }
    if elevated(latest):
        if not assessable(latest):
            used = [m for m in results[-2:] if elevated(m)]
            return make_finding(rule, ctx, "too-early", values, used, line)
        if previous is not None and elevated(previous) and assessable(previous):
            return make_finding(rule, ctx, "confirmed", values, [previous, latest], line)
        used = [previous, latest] if previous is not None else [latest]
        return make_finding(rule, ctx, "unconfirmed", values, used, line)
    if suppressed(latest):
        return make_finding(rule, ctx, "suppressed", values, [latest], line)
    if previous is not None and not suppressed(previous):
        return make_finding(rule, ctx, "low-level", values, [previous, latest], line)
    used = [previous, latest] if previous is not None else [latest]
    return make_finding(rule, ctx, "detectable-low", values, used, line)
