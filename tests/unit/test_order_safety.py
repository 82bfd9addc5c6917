"""Order-time safety checks: the shipped rule instances name failure rules that exist and run before them."""

from __future__ import annotations

from fhirsvc.rules.order_safety import FailureRulesParams
from fhirsvc.terminology.knowledge import Knowledge


def test_every_order_check_names_earlier_failure_rules_of_its_program(knowledge: Knowledge) -> None:
    checked = 0
    for program in knowledge.programs:
        ids = [rule.id for rule in program.rules]
        for position, rule in enumerate(program.rules):
            if isinstance(rule.params, FailureRulesParams):
                checked += 1
                for name in rule.params.failure_rules:
                    assert name in ids[:position], f"{program.id}/{rule.id}: {name} is not an earlier rule"
    assert checked >= 6  # hiv (2), nsclc (2), crc (2), ms (1)


def test_every_program_checks_orders_for_drugs_not_tolerated(knowledge: Knowledge) -> None:
    for program in knowledge.programs:
        assert any(rule.kind == "order-not-tolerated" for rule in program.rules), program.id
