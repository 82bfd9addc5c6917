"""Rule kinds come from one registry, and program content that does not fit a kind fails at load, never per patient."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
from pathlib import Path
from typing import get_type_hints

import pytest
from typer.testing import CliRunner

import fhirsvc.rules
from fhirsvc.cli import app
from fhirsvc.pipeline import rule_inputs
from fhirsvc.rules.registry import RULE_KINDS
from fhirsvc.terminology.check import check_mappings
from fhirsvc.terminology.knowledge import load_knowledge
from fhirsvc.terminology.paths import data_dir
from fhirsvc.terminology.program_files import ProgramError
from fhirsvc.terminology.programs import Rule
from fhirsvc.terminology.rule_params import RuleParams

RA = Path(__file__).resolve().parent.parent / "data" / "programs" / "ra.yaml"


def _kind_functions() -> list[object]:
    """Every function in fhirsvc/rules/ shaped like a rule kind: (rule, params, ctx) → Finding."""
    found: list[object] = []
    for module_info in pkgutil.iter_modules(fhirsvc.rules.__path__):
        module = importlib.import_module(f"fhirsvc.rules.{module_info.name}")
        for _, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__ and list(inspect.signature(function).parameters)[:3] == [
                "rule",
                "params",
                "ctx",
            ]:
                found.append(function)
    return found


def test_every_kind_function_is_registered() -> None:
    functions = _kind_functions()
    assert len(functions) == len(RULE_KINDS)
    assert {id(f) for f in functions} == {id(kind.evaluate) for kind in RULE_KINDS.values()}


@pytest.mark.parametrize("name", sorted(RULE_KINDS))
def test_each_kind_gets_the_parameter_model_its_function_reads(name: str) -> None:
    kind = RULE_KINDS[name]
    assert get_type_hints(kind.evaluate)["params"] is kind.params
    assert issubclass(kind.params, RuleParams)
    assert kind.params.model_config.get("extra") == "forbid"
    assert not kind.outcomes & kind.optional_outcomes


def test_shipped_programs_load_with_typed_parameters() -> None:
    knowledge = load_knowledge(extra_programs=[RA], rule_kinds=RULE_KINDS)
    rules = [rule for program in knowledge.programs for rule in program.rules]
    assert {rule.kind for rule in rules} == set(RULE_KINDS)  # every kind is exercised by some program
    for rule in rules:
        assert type(rule.params) is RULE_KINDS[rule.kind].params, rule.id
    hiv = next(p for p in knowledge.programs if p.id == "hiv")
    failure = next(r for r in hiv.rules if r.id == "hiv-virologic-failure")
    assert failure.params.model_dump()["threshold"] == hiv.parameters["failure_threshold"]  # `$name` resolved


def test_an_override_reaches_the_typed_parameters() -> None:
    knowledge = load_knowledge(overrides={"hiv.failure_threshold": 1000}, rule_kinds=RULE_KINDS)
    hiv = next(p for p in knowledge.programs if p.id == "hiv")
    failure = next(r for r in hiv.rules if r.id == "hiv-virologic-failure")
    assert failure.params.model_dump()["threshold"] == 1000


def test_rule_inputs_come_from_the_registry() -> None:
    knowledge = load_knowledge(rule_kinds=RULE_KINDS)
    by_kind: dict[str, Rule] = {rule.kind: rule for program in knowledge.programs for rule in program.rules}
    assert "AllergyIntolerance" in rule_inputs(by_kind["intolerance"])
    assert "Observation" not in rule_inputs(by_kind["intolerance"])
    assert not {"Observation", "AllergyIntolerance", "Goal"} & rule_inputs(by_kind["interaction"])
    assert {"Observation", "Goal"} <= rule_inputs(by_kind["latest-above-target"])
    assert "Goal" not in rule_inputs(by_kind["confirmed-threshold"])
    assert "MedicationRequest" in rule_inputs(by_kind["interaction"])


# (file under mappings/, text to replace, its replacement, what the error must say)
BROKEN = {
    "misspelt kind": (
        "programs/hiv.yaml",
        "kind: confirmed-threshold",
        "kind: confirmed-treshold",
        "hiv.yaml: rule hiv-virologic-failure (confirmed-treshold): kind: unknown rule kind 'confirmed-treshold'",
    ),
    "missing parameter": (
        "programs/hiv.yaml",
        "      suppressed_below: $suppressed_below\n",
        "",
        "hiv.yaml: rule hiv-virologic-failure (confirmed-threshold): params.suppressed_below: missing",
    ),
    "misspelt parameter": (
        "programs/t2d.yaml",
        "      lookback_days: $a1c_lookback_days",
        "      look_back_days: $a1c_lookback_days",
        "t2d.yaml: rule t2d-a1c-above-target (latest-above-target): params.look_back_days: unknown parameter",
    ),
    "wrong type": (
        "programs/ms.yaml",
        "min_new_lesions: $min_new_lesions",
        "min_new_lesions: two",
        "ms.yaml: rule ms-breakthrough (disease-activity): params.min_new_lesions: Input should be a valid number",
    ),
    "out of bounds": (
        "programs/crc.yaml",
        "max_days: $imaging_max_days",
        "max_days: 0",
        "crc.yaml: rule crc-imaging-overdue (monitoring-overdue): params.max_days: Input should be greater than",
    ),
    "parameters that contradict each other": (
        "programs/t2d.yaml",
        "metformin_start_below: 45",
        "metformin_start_below: 20",
        "t2d.yaml: rule t2d-metformin-kidney (drug-below-floor): params: start_below 20.0 is below "
        "contraindicated_below 30.0",
    ),
    "wrong type of a program parameter": (
        "programs/hiv.yaml",
        "  min_days_on_line: 168 ",
        "  min_days_on_line: 168.5 ",
        "hiv.yaml: rule hiv-virologic-failure (confirmed-threshold): params.min_days_on_line: Input should be a valid "
        "integer",
    ),
    "unknown program parameter": (
        "programs/hiv.yaml",
        "threshold: $failure_threshold",
        "threshold: $failure_treshold",
        "hiv.yaml: rule hiv-virologic-failure (confirmed-threshold): params.threshold: names unknown program "
        "parameter $failure_treshold",
    ),
    "unknown observation": (
        "programs/crc.yaml",
        "      observation: disease_status\n      max_days",
        "      observation: disease_stat\n      max_days",
        "crc.yaml: rule crc-imaging-overdue (monitoring-overdue): params.observation: unknown observation "
        "'disease_stat'",
    ),
    "unknown condition set": (
        "programs/ms.yaml",
        "relapse_conditions: ms\n",
        "relapse_conditions: mss\n",
        "ms.yaml: rule ms-breakthrough (disease-activity): params.relapse_conditions: unknown condition set 'mss'",
    ),
    "unknown value set": (
        "programs/nsclc.yaml",
        "progression_values: progression",
        "progression_values: progresion",
        "nsclc.yaml: rule nsclc-progression (progression): params.progression_values: unknown value set 'progresion' "
        "of observation disease_status",
    ),
    "unknown flag": (
        "programs/t2d.yaml",
        "class_gates: {SGLT2i: egfr_below_20}",
        "class_gates: {SGLT2i: egfr_below_2O}",
        "t2d.yaml: rule t2d-organ-protection (comorbidity-preference): params.class_gates.SGLT2i: unknown flag "
        "'egfr_below_2O'",
    ),
    "unknown flag in a nested group": (
        "programs/t2d.yaml",
        "- {flag: ckd, classes:",
        "- {flag: ckdd, classes:",
        "t2d.yaml: rule t2d-organ-protection (comorbidity-preference): params.indications[1].flag: unknown flag 'ckdd'",
    ),
    "unknown outcome named by a parameter": (
        "programs/ms.yaml",
        "high_efficacy_outcome: activity-on-high-efficacy",
        "high_efficacy_outcome: activity-on-high-eficacy",
        "ms.yaml: rule ms-breakthrough (disease-activity): params.high_efficacy_outcome: unknown outcome",
    ),
    "unknown drug class": (
        "programs/ms.yaml",
        "platform_classes: [interferon-beta, glatiramer,",
        "platform_classes: [interferon-beta, glatirammer,",
        "ms.yaml: rule ms-breakthrough (disease-activity): params.platform_classes[1]: unknown drug class "
        "'glatirammer'",
    ),
    "unknown drug": (
        "programs/ms.yaml",
        "      drugs: [natalizumab]\n      observation: jcv",
        "      drugs: [natalizumabb]\n      observation: jcv",
        "ms.yaml: rule ms-natalizumab-jcv (positive-on-drug): params.drugs[0]: unknown drug 'natalizumabb'",
    ),
    "unknown drug in the line settings": (
        "programs/ms.yaml",
        "      - drugs: [natalizumab]",
        "      - drugs: [natalizumabb]",
        "ms.yaml: lines.coverage.intervals[",
    ),
    "unknown drug class in a recommendation": (
        "programs/crc.yaml",
        "line_classes_none: [anti-EGFR-mAb]",
        "line_classes_none: [anti-EGFR-mab]",
        "crc.yaml: rule crc-progression (progression): outcomes.progression.recommendations[",
    ),
    "missing outcome": (
        "programs/hiv.yaml",
        "      awaiting-first-result:",
        "      awaiting-first:",
        "hiv.yaml: rule hiv-virologic-failure (confirmed-threshold): outcomes: missing ['awaiting-first-result']",
    ),
    "outcome the kind never produces": (
        "programs/hiv.yaml",
        "      awaiting-first-result:",
        "      awaiting-first:",
        "hiv.yaml: rule hiv-virologic-failure (confirmed-threshold): outcomes: ['awaiting-first'] never produced",
    ),
    "a general trigger": (
        "triggers.yaml",
        "new_within_days: 30",
        "new_within_days: -5",
        "rule interaction (interaction, a general trigger): params.new_within_days: Input should be greater than",
    ),
    "unknown rule in suppressed_by": (
        "programs/hiv.yaml",
        "suppressed_by: [hiv-virologic-failure]",
        "suppressed_by: [hiv-virological-failure]",
        "hiv.yaml: rule hiv-viral-load-overdue: suppressed_by names unknown rules ['hiv-virological-failure']",
    ),
    "unknown observation in a recommendation": (
        "programs/nsclc.yaml",
        "observation_absent: genetic_variant",
        "observation_absent: genetic_variants",
        "nsclc.yaml: rule nsclc-progression: a recommendation names unknown observations ['genetic_variants']",
    ),
}


def _broken_copy(tmp_path: Path, relative: str, old: str, new: str) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    target = copy / relative
    text = target.read_text(encoding="utf-8")
    assert old in text, f"{relative} no longer holds {old!r}: update the test case"
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    return copy


@pytest.mark.parametrize(("relative", "old", "new", "message"), list(BROKEN.values()), ids=list(BROKEN))
def test_broken_content_fails_the_check_and_the_load(
    tmp_path: Path, relative: str, old: str, new: str, message: str
) -> None:
    copy = _broken_copy(tmp_path, relative, old, new)
    report = check_mappings(copy, rule_kinds=RULE_KINDS)
    assert not report.ok
    assert any(message in error for error in report.errors), report.errors
    with pytest.raises(ProgramError) as refused:
        load_knowledge(copy, rule_kinds=RULE_KINDS)
    assert message in str(refused.value)


def test_the_cli_check_exits_non_zero_naming_file_rule_and_field(tmp_path: Path) -> None:
    copy = _broken_copy(tmp_path, "programs/hiv.yaml", "kind: confirmed-threshold", "kind: confirmed-treshold")
    result = CliRunner().invoke(app, ["mappings", "check", str(copy)])
    assert result.exit_code == 1
    assert "hiv.yaml: rule hiv-virologic-failure (confirmed-treshold): kind: unknown rule kind" in result.output


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    copy = _broken_copy(tmp_path, "programs/ms.yaml", "min_new_lesions: $min_new_lesions", "min_new_lesions: two")
    ms = copy / "programs" / "ms.yaml"
    text = ms.read_text(encoding="utf-8")
    ms.write_text(text.replace("      positive_above:", "      positive_abov:", 1), encoding="utf-8")
    with pytest.raises(ProgramError) as refused:
        load_knowledge(copy, rule_kinds=RULE_KINDS)
    fields = [problem.split(": ")[2] for problem in refused.value.problems if problem.startswith("ms.yaml: ")]
    assert "params.min_new_lesions" in fields
    assert "params.positive_abov" in fields and "params.positive_above" in fields


def test_every_file_is_reported_at_once(tmp_path: Path) -> None:
    copy = _broken_copy(tmp_path, "programs/hiv.yaml", "kind: confirmed-threshold", "kind: confirmed-treshold")
    nsclc = copy / "programs" / "nsclc.yaml"
    text = nsclc.read_text(encoding="utf-8")
    nsclc.write_text(text.replace("progression_values: progression", "progression_values: x", 1), encoding="utf-8")
    report = check_mappings(copy, rule_kinds=RULE_KINDS)
    assert [error.split(": ")[1] for error in report.errors] == ["hiv.yaml", "nsclc.yaml"], report.errors
