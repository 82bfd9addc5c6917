"""Every rule kind in one place: its function, its parameter model, the outcomes it produces and what it reads.

Adding a kind: write its function (rule, typed parameters, context → Finding) and its parameter model, then add
one entry here. Program loading checks every rule against this table (`load_knowledge(rule_kinds=RULE_KINDS)`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from fhirsvc.findings import Finding
from fhirsvc.rules.activity import DiseaseActivityParams, PositiveOnDrugParams, disease_activity, positive_on_drug
from fhirsvc.rules.base import ProgramContext
from fhirsvc.rules.confirmed_threshold import ConfirmedThresholdParams, confirmed_threshold
from fhirsvc.rules.order_safety import (
    FailureRulesParams,
    NotToleratedParams,
    RechallengeParams,
    order_class_rechallenge,
    order_failing_regimen,
    order_not_tolerated,
    order_single_drug_added,
)
from fhirsvc.rules.progression import MonitoringOverdueParams, ProgressionParams, monitoring_overdue, progression
from fhirsvc.rules.targets import (
    ComorbidityPreferenceParams,
    DrugBelowFloorParams,
    LatestAboveTargetParams,
    comorbidity_preference,
    drug_below_floor,
    latest_above_target,
)
from fhirsvc.rules.triggers import (
    InteractionParams,
    PregnancyParams,
    interaction,
    intolerance,
    pregnancy_contraindication,
)
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import RuleParams

P = TypeVar("P", bound=RuleParams)

RESULTS = frozenset({"Observation"})


@dataclass(frozen=True)
class RuleKind(Generic[P]):
    """One rule kind. `reads`: the resource types it reads beyond the patient, conditions and medications (the
    lines); a finding is withheld when one of them could not be read completely."""

    evaluate: Callable[[Rule, P, ProgramContext], Finding]
    params: type[P]
    outcomes: frozenset[str]  # produced whatever the parameters: every rule of the kind defines them all
    reads: frozenset[str]
    optional_outcomes: frozenset[str] = frozenset()  # produced only when the rule defines them
    # Judges draft orders (order-select, order-sign) only: not run, and no finding, for a record without any.
    order_time: bool = False

    def __call__(self, rule: Rule, ctx: ProgramContext) -> Finding:
        params = rule.params
        if not isinstance(params, self.params):  # only a program built without load_program gets here
            raise TypeError(f"rule {rule.id}: parameters not checked against kind {rule.kind} (use load_program)")
        return self.evaluate(rule, params, ctx)


RULE_KINDS: Mapping[str, RuleKind[Any]] = MappingProxyType(
    {
        "confirmed-threshold": RuleKind(
            evaluate=confirmed_threshold,
            params=ConfirmedThresholdParams,
            outcomes=frozenset(
                {
                    "no-therapy",
                    "no-result",
                    "awaiting-first-result",
                    "too-early",
                    "confirmed",
                    "unconfirmed",
                    "suppressed",
                    "low-level",
                    "detectable-low",
                }
            ),
            reads=RESULTS,
        ),
        "latest-above-target": RuleKind(
            evaluate=latest_above_target,
            params=LatestAboveTargetParams,
            outcomes=frozenset({"no-therapy", "awaiting", "no-result", "above", "too-early", "at-target"}),
            reads=frozenset({"Observation", "Goal"}),  # a patient's Goal replaces the default target
        ),
        "comorbidity-preference": RuleKind(
            evaluate=comorbidity_preference,
            params=ComorbidityPreferenceParams,
            outcomes=frozenset({"no-therapy", "not-indicated", "covered", "indicated", "not-startable"}),
            reads=RESULTS,
        ),
        "drug-below-floor": RuleKind(
            evaluate=drug_below_floor,
            params=DrugBelowFloorParams,
            outcomes=frozenset({"not-on-drug", "no-result", "contraindicated", "not-to-start", "within-label"}),
            reads=RESULTS,
        ),
        "progression": RuleKind(
            evaluate=progression,
            params=ProgressionParams,
            outcomes=frozenset({"no-therapy", "no-progression", "progression"}),
            reads=RESULTS,
        ),
        "monitoring-overdue": RuleKind(
            evaluate=monitoring_overdue,
            params=MonitoringOverdueParams,
            outcomes=frozenset({"no-therapy", "on-track", "never-recorded", "overdue"}),
            reads=RESULTS,
        ),
        "disease-activity": RuleKind(
            evaluate=disease_activity,
            params=DiseaseActivityParams,
            outcomes=frozenset({"no-therapy", "not-platform", "too-early", "stable", "breakthrough"}),
            reads=RESULTS,
        ),
        "positive-on-drug": RuleKind(
            evaluate=positive_on_drug,
            params=PositiveOnDrugParams,
            outcomes=frozenset({"not-on-drug", "no-result", "positive", "negative"}),
            reads=RESULTS,
        ),
        "intolerance": RuleKind(
            evaluate=intolerance,
            params=RuleParams,  # no parameters
            outcomes=frozenset({"no-therapy", "none", "switched", "not-tolerated"}),
            optional_outcomes=frozenset({"continues", "continues-substitute"}),
            reads=frozenset({"AllergyIntolerance"}),
        ),
        "pregnancy-contraindication": RuleKind(
            evaluate=pregnancy_contraindication,
            params=PregnancyParams,
            outcomes=frozenset({"no-therapy", "not-pregnant", "compatible", "contraindicated"}),
            reads=RESULTS,
        ),
        "interaction": RuleKind(
            evaluate=interaction,
            params=InteractionParams,
            outcomes=frozenset({"no-therapy", "interacting", "none"}),
            reads=frozenset(),  # medications only
        ),
        # Order-time safety checks: run only when the record holds draft orders (order-select, order-sign).
        # The failing line is judged by the program's failure rules, which read results.
        "order-failing-regimen": RuleKind(
            evaluate=order_failing_regimen,
            params=FailureRulesParams,
            outcomes=frozenset({"no-order", "none", "continues-failing"}),
            reads=RESULTS,
            order_time=True,
        ),
        "order-single-drug-added": RuleKind(
            evaluate=order_single_drug_added,
            params=FailureRulesParams,
            outcomes=frozenset({"no-order", "none", "single-drug-added"}),
            reads=RESULTS,
            order_time=True,
        ),
        "order-class-rechallenge": RuleKind(
            evaluate=order_class_rechallenge,
            params=RechallengeParams,
            outcomes=frozenset({"no-order", "none", "rechallenge"}),
            reads=RESULTS,
            order_time=True,
        ),
        "order-not-tolerated": RuleKind(
            evaluate=order_not_tolerated,
            params=NotToleratedParams,
            outcomes=frozenset({"no-order", "none", "not-tolerated"}),
            reads=frozenset({"AllergyIntolerance"}),
            order_time=True,
        ),
    }
)
