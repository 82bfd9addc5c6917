"""Order-time safety checks: a draft order (order-select, order-sign) compared with the line state it would change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date

from pydantic import Field

from fhirsvc.findings import Finding, Measurement
from fhirsvc.lot.engine import Line, regimen_keys
from fhirsvc.rules.base import ProgramContext, make_finding
from fhirsvc.rules.triggers import NOT_TOLERATED
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import DrugClassName, RuleParams

_FAILING = frozenset({"second-line-evaluation", "next-line-evaluation"})


class FailureRulesParams(RuleParams):
    """The program's rules (ids, placed before this one) whose evaluation finding says the line is failing."""

    failure_rules: list[str] = Field(min_length=1)


class RechallengeParams(FailureRulesParams):
    """`order-class-rechallenge`: the classes not to be given again after progression on one of them."""

    classes: list[DrugClassName] = Field(min_length=1)


class NotToleratedParams(RuleParams):
    """`order-not-tolerated`: classes whose reactions are drug-specific, matched by ingredient only (abacavir
    hypersensitivity says nothing of tenofovir, both NRTIs)."""

    ingredient_only_classes: list[DrugClassName] = Field(default_factory=list)


@dataclass(frozen=True)
class Order:
    """The draft orders of the program's drugs, and the regimen on record that they would change."""

    refs: list[str]  # the draft orders' refs ("draft:MedicationRequest/<id>"): "this order" on a card
    drugs: frozenset[str]  # the program's drugs they plan
    line: Line | None  # the line on record: the current one, or the one the draft orders would replace
    regimen: frozenset[str]  # that line's drugs on record (no planned-only drug), still taken or last taken


@dataclass(frozen=True)
class Failure:
    """Why the line on record is failing: the failure rule's finding, its results and evidence."""

    rule: str
    summary: str
    measurements: list[Measurement]
    evidence: list[str]


def order_of(ctx: ProgramContext) -> Order | None:
    """The program's drugs the draft orders plan, against the line on record; None without such an order."""
    refs = [ref for ref, drugs in ctx.facts.drafts.items() if drugs & ctx.classes.keys()]
    if not refs:
        return None
    drugs = frozenset(d for ref in refs for d in ctx.facts.drafts[ref] if d in ctx.classes)
    recorded = [line for line in ctx.lines if not line.planned]
    line = recorded[-1] if recorded else None
    if line is None:
        return Order(refs, drugs, None, frozenset())
    day = min(ctx.as_of, line.end or ctx.as_of)
    on_record = {e.drug for e in ctx.eras if not e.planned and e.drug in line.drugs}
    taken = frozenset(d for d in on_record if any(e.drug == d and not e.planned and e.active_on(day) for e in ctx.eras))
    return Order(refs, drugs, line, taken or frozenset(on_record))


def failure_of(ctx: ProgramContext, rule_ids: list[str], line: Line) -> Failure | None:
    """The first failure rule that finds `line` failing: its finding when the line is still current, else the rule
    asked again with the line current until the next one began (the draft orders open a new line today; a scan
    after the last cycle still judges the line it followed)."""
    from fhirsvc.rules.registry import RULE_KINDS  # the registry imports this module

    rules = {rule.id: rule for rule in ctx.program.rules}
    judged = None if ctx.current_line is line else _as_current(ctx, line)
    for rule_id in rule_ids:
        rule = rules.get(rule_id)
        if rule is None:
            continue
        found = ctx.findings.get(rule_id) if judged is None else RULE_KINDS[rule.kind](rule, judged)
        if found is not None and found.status in _FAILING:
            evidence = [ref for ref in found.evidence if ref not in line.refs and ref not in ctx.facts.drafts]
            return Failure(rule_id, found.summary, found.measurements, evidence)
    return None


def _as_current(ctx: ProgramContext, line: Line) -> ProgramContext:
    """The context with an ended `line` still current, as of the day the next line began (or today)."""
    index = next(i for i, known in enumerate(ctx.lines) if known is line)
    following = ctx.lines[index + 1] if index + 1 < len(ctx.lines) else None
    day = min(ctx.as_of, following.start) if following else ctx.as_of
    earlier = [*ctx.lines[:index], replace(line, end=None, end_reason=None)]
    return ProgramContext(ctx.program, ctx.facts, day, earlier, ctx.eras, ctx.classes, ctx.safety)


def _keys(ctx: ProgramContext, drugs: frozenset[str]) -> frozenset[str]:
    """What identifies each drug's place in a regimen (HIV: its class; oncology: its substitution group)."""
    keys = regimen_keys(ctx.program.lines, ctx.classes)
    return frozenset(keys.get(d, d) for d in drugs)


def _same_drugs(ctx: ProgramContext, drugs: frozenset[str]) -> frozenset[str]:
    """Drugs with their interchangeable ones (cisplatin with carboplatin): the same drug for a regimen."""
    found = set(drugs)
    for group in ctx.program.lines.substitutions:
        if drugs & set(group):
            found |= set(group)
    return frozenset(found)


def _finding(
    rule: Rule,
    ctx: ProgramContext,
    outcome: str,
    values: Mapping[str, object],
    order: Order,
    failure: Failure | None = None,
    refs: list[str] | None = None,
) -> Finding:
    records = list(dict.fromkeys([*(failure.evidence if failure else []), *(refs or [])]))
    # A card's detail tabulates results and the line's records; the draft and the other records it cites are named
    # here, the draft in the clinician's words (its id is the client's, never shown).
    cited = [f"this order ({', '.join(sorted(order.drugs))})", *records]
    values = {
        "order": ", ".join(sorted(order.drugs)),
        "regimen": ", ".join(sorted(order.regimen)),
        "cited": "; ".join(cited),
        **values,
    }
    measurements = failure.measurements if failure else []
    evidence = [*order.refs, *records]
    return make_finding(rule, ctx, outcome, values, measurements, order.line, evidence)


def order_failing_regimen(rule: Rule, params: FailureRulesParams, ctx: ProgramContext) -> Finding:
    """Every drug the draft orders plan belongs to the regimen that is failing (by regimen key: HIV classes,
    oncology substitution groups): a renewal or a same-class swap that continues the failing line."""
    order = order_of(ctx)
    if order is None:
        return make_finding(rule, ctx, "no-order", {})
    if order.line is None or not order.regimen or not _keys(ctx, order.drugs) <= _keys(ctx, order.regimen):
        return _finding(rule, ctx, "none", {}, order)
    failure = failure_of(ctx, params.failure_rules, order.line)
    if failure is None:
        return _finding(rule, ctx, "none", {}, order)
    return _finding(rule, ctx, "continues-failing", {"failure": failure.summary}, order, failure)


def order_single_drug_added(rule: Rule, params: FailureRulesParams, ctx: ProgramContext) -> Finding:
    """Exactly one new active drug added to a failing regimen that goes on: the draft orders plan one drug not in
    it (a booster aside) and either nothing else (the regimen on record continues) or every drug of it again. A
    draft that re-orders only part of the regimen with one new drug replaces the rest: a switch, not an addition."""
    order = order_of(ctx)
    if order is None:
        return make_finding(rule, ctx, "no-order", {})
    if order.line is None or not order.regimen:
        return _finding(rule, ctx, "none", {}, order)
    new = order.drugs - _same_drugs(ctx, order.regimen)
    ignored = set(ctx.program.lines.ignore_classes)  # a booster (ritonavir, cobicistat) is no active drug
    active = {d for d in new if ctx.classes.get(d) not in ignored}
    continued = order.drugs - new
    if len(active) != 1 or (continued and not order.regimen <= _same_drugs(ctx, continued)):
        return _finding(rule, ctx, "none", {}, order)
    failure = failure_of(ctx, params.failure_rules, order.line)
    if failure is None:
        return _finding(rule, ctx, "none", {}, order)
    values = {"drug": next(iter(active)), "failure": failure.summary}
    return _finding(rule, ctx, "single-drug-added", values, order, failure)


def order_class_rechallenge(rule: Rule, params: RechallengeParams, ctx: ProgramContext) -> Finding:
    """A planned drug of a class (PD-1/PD-L1 inhibitors) after progression on a line that held one: the latest such
    line on record that the failure rules find failing."""
    order = order_of(ctx)
    if order is None:
        return make_finding(rule, ctx, "no-order", {})
    watched = set(params.classes)
    planned = sorted(d for d in order.drugs if ctx.classes.get(d) in watched)
    if not planned:
        return _finding(rule, ctx, "none", {}, order)
    for line in reversed([line for line in ctx.lines if not line.planned]):
        before = sorted(d for d in line.drugs if ctx.classes.get(d) in watched)
        if not before:
            continue
        failure = failure_of(ctx, params.failure_rules, line)
        if failure is None:
            continue
        values = {
            "drugs": ", ".join(planned),
            "previous": ", ".join(before),
            "previous_line": line.number,
            "failure": failure.summary,
        }
        shown = Order(order.refs, order.drugs, line, frozenset(line.drugs))
        return _finding(rule, ctx, "rechallenge", values, shown, failure)
    return _finding(rule, ctx, "none", {}, order)


def order_not_tolerated(rule: Rule, params: NotToleratedParams, ctx: ProgramContext) -> Finding:
    """A planned drug, or a drug of its class, recorded as not tolerated: an AllergyIntolerance, or a medication
    stopped with the reason "treatment not tolerated"."""
    order = order_of(ctx)
    if order is None:
        return make_finding(rule, ctx, "no-order", {})
    by_ingredient = set(params.ingredient_only_classes)
    events: list[tuple[date, str, frozenset[str]]] = []
    for allergy in ctx.facts.allergies:
        if allergy.date is None or allergy.date <= ctx.as_of:
            events.append((allergy.date or date.min, allergy.ref, allergy.drugs))
    for exposure in ctx.facts.exposures:
        if exposure.planned or not exposure.stop_reasons or exposure.end is None or exposure.end > ctx.as_of:
            continue
        if any(reason.code == NOT_TOLERATED for reason in exposure.stop_reasons):
            events.append((exposure.end, exposure.ref, exposure.drugs))
    hits: list[tuple[date, str, str, str]] = []  # (date, ref, planned drug, what was not tolerated)
    for day, ref, culprits in sorted(events):
        for drug in sorted(order.drugs):
            drug_class = ctx.classes.get(drug)
            if drug in culprits:
                hits.append((day, ref, drug, drug))
            elif drug_class and drug_class not in by_ingredient:
                same = sorted(c for c in culprits if ctx.classes.get(c) == drug_class)
                if same:
                    hits.append((day, ref, drug, f"{', '.join(same)} ({drug_class})"))
    if not hits:
        return _finding(rule, ctx, "none", {}, order)
    planned = sorted({drug for _, _, drug, _ in hits})
    culprit_text = "; ".join(dict.fromkeys(what for _, _, _, what in hits))
    dated = [day for day, _, _, _ in hits if day != date.min]
    values = {
        "drugs": ", ".join(planned),
        "culprits": culprit_text,
        "date": max(dated).isoformat() if dated else "date not recorded",
    }
    refs = list(dict.fromkeys(ref for _, ref, _, _ in hits))
    return _finding(rule, ctx, "not-tolerated", values, order, refs=refs)
