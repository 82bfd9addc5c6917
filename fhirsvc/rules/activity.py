"""Rule kinds on disease activity and safety results: `disease-activity` (MS breakthrough), `positive-on-drug`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from fhirsvc.facts import Diagnosis
from fhirsvc.findings import Finding, Measurement
from fhirsvc.rules.base import ProgramContext, make_finding, number
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import (
    ConditionSetName,
    DrugClassName,
    DrugName,
    ObservationName,
    OutcomeName,
    RuleParams,
)


class DiseaseActivityParams(RuleParams):
    """`disease-activity`: what counts as activity, in which window, on which (platform) therapy."""

    platform_classes: list[DrugClassName] = Field(min_length=1)
    min_days_on_line: int = Field(ge=0)
    window_days: int = Field(ge=1)
    relapse_conditions: ConditionSetName
    exacerbation_conditions: ConditionSetName | None = None
    min_relapses: int = Field(ge=1)
    lesions_observation: ObservationName
    min_new_lesions: float = Field(gt=0)
    edss_observation: ObservationName
    high_efficacy_outcome: OutcomeName | None = Field(
        default=None, description="The outcome for the same activity on a therapy outside `platform_classes`."
    )


class PositiveOnDrugParams(RuleParams):
    """`positive-on-drug`: the drugs a safety result concerns and when the result is positive."""

    drugs: list[DrugName] = Field(min_length=1)
    observation: ObservationName
    positive_above: float


def _edss_step(baseline: float) -> float:
    """Confirmed disability progression convention: +1.5 from 0, +1.0 from 1.0-5.5, +0.5 from 6.0."""
    if baseline < 1.0:
        return 1.5
    return 1.0 if baseline <= 5.5 else 0.5


def _relapses(params: DiseaseActivityParams, ctx: ProgramContext) -> list[Diagnosis]:
    """Relapses on record: the disease coded with clinicalStatus "relapse", or an exacerbation diagnosis.

    An exacerbation is an episode, so its own clinicalStatus (often resolved once it is over, or absent on an
    encounter diagnosis) does not matter: its onset (or recordedDate) dates the relapse. Refuted and
    entered-in-error records never reach the facts.
    """
    found = {d.ref: d for d in ctx.diagnoses(params.relapse_conditions, status="relapse")}
    if params.exacerbation_conditions is not None:
        for d in ctx.diagnoses(params.exacerbation_conditions, ended=True):
            found.setdefault(d.ref, d)
    return list(found.values())


def disease_activity(rule: Rule, params: DiseaseActivityParams, ctx: ProgramContext) -> Finding:
    """AAN 2018 breakthrough on a platform therapy: relapse, new MRI lesions or disability progression in a year.

    With `high_efficacy_outcome`, the same activity on any other therapy gives that outcome (a review, not a
    platform failure).
    """
    platform = set(params.platform_classes)
    min_days = params.min_days_on_line
    window = timedelta(days=params.window_days)
    line = ctx.current_line
    if line is None:
        return make_finding(rule, ctx, "no-therapy", {})
    # The line's own drugs: on the day a line ends, the drug that replaces it has already started.
    active = [d for d in ctx.program_drugs_active() if d in line.drugs]
    on_platform = bool(active) and all(ctx.classes.get(d) in platform for d in active)
    if not active or (not on_platform and params.high_efficacy_outcome is None):
        return make_finding(rule, ctx, "not-platform", {}, [], line)
    if (ctx.as_of - line.start).days < min_days:
        return make_finding(rule, ctx, "too-early" if on_platform else "not-platform", {}, [], line)
    since = max(line.start, ctx.as_of - window)
    reasons: list[str] = []
    evidence: list[str] = []
    used: list[Measurement] = []
    relapses = [d for d in _relapses(params, ctx) if d.onset is not None and since <= d.onset <= ctx.as_of]
    if len(relapses) >= params.min_relapses:
        reasons.append(f"{len(relapses)} relapse(s) (latest {max(d.onset for d in relapses if d.onset)})")
        evidence += [d.ref for d in relapses]
    lesions = [m for m in ctx.measurements(params.lesions_observation) if m.date >= since]
    total = sum(m.value or 0 for m in lesions)
    if total >= params.min_new_lesions:
        reasons.append(f"{number(total)} new MRI lesions")
        used += [m for m in lesions if m.value]
    edss = [m for m in ctx.measurements(params.edss_observation) if m.value is not None]
    in_window = [m for m in edss if m.date >= since]
    baseline_pool = [m for m in edss if m.date >= line.start] or [m for m in edss if m.date < since]
    if in_window and baseline_pool:
        baseline = baseline_pool[0] if baseline_pool[0].date >= line.start else baseline_pool[-1]
        latest = in_window[-1]
        if (
            latest is not baseline
            and latest.value is not None
            and baseline.value is not None
            and latest.value - baseline.value >= _edss_step(baseline.value)
        ):
            reasons.append(f"EDSS {number(baseline.value)} → {number(latest.value)}")
            used += [baseline, latest]
    if not reasons:
        return make_finding(rule, ctx, "stable" if on_platform else "not-platform", {}, [], line)
    values = {"reasons": "; ".join(reasons), "drugs": ", ".join(active)}
    # Activity on a higher-efficacy therapy is no platform breakthrough, but still asks for a review (AAN 2018:
    # monitor disease activity on every disease-modifying therapy).
    outcome = "breakthrough" if on_platform else str(params.high_efficacy_outcome)
    return make_finding(rule, ctx, outcome, values, used, line, evidence)


def positive_on_drug(rule: Rule, params: PositiveOnDrugParams, ctx: ProgramContext) -> Finding:
    """A safety result turned positive while on a drug it concerns (natalizumab with JCV antibody index > 0.9)."""
    drugs = set(params.drugs)
    above = params.positive_above
    line = ctx.current_line
    on = [d for d in ctx.program_drugs_active() if d in drugs]
    if line is None or not on:
        return make_finding(rule, ctx, "not-on-drug", {})
    results = ctx.results(params.observation)
    if not results:
        return make_finding(rule, ctx, "no-result", {"drug": on[0]}, [], line)
    latest = results[-1]
    positive = "POS" in latest.interpretation or (latest.value is not None and latest.value > above)
    measured = ctx.as_measurement(latest)
    values = {"drug": on[0], "value": measured.shown, "date": latest.date.isoformat()}
    return make_finding(rule, ctx, "positive" if positive else "negative", values, [measured], line)
