"""Knowledge: the drug catalog, safety tables and every enabled program, loaded once per process from mappings/."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from fhirsvc.terminology.catalog import Drug, DrugCatalog, load_catalog
from fhirsvc.terminology.observation_filter import ObservationFilter
from fhirsvc.terminology.paths import data_dir
from fhirsvc.terminology.program_files import ProgramError, drug_name_problems, load_program, load_yaml
from fhirsvc.terminology.programs import Program
from fhirsvc.terminology.rule_params import RuleKinds
from fhirsvc.terminology.safety import SafetyTables, load_safety

# Catalog "condition" under which drugs known only to the safety tables are filed (they belong to no program).
SAFETY_CONDITION = "_safety"


@dataclass(frozen=True)
class Knowledge:
    catalog: DrugCatalog
    programs: tuple[Program, ...]
    safety: SafetyTables = field(default_factory=lambda: SafetyTables({}, ()))
    drug_classes: dict[str, dict[str, str]] = field(default_factory=dict)  # program id → ingredient → class

    @cached_property
    def observation_filter(self) -> ObservationFilter:
        """Every Observation code and code.text phrase any enabled program reads."""
        keys: set[str] = set()
        patterns: set[str] = set()
        for program in self.programs:
            for spec in program.observations.values():
                keys |= spec.keys
                patterns.update(spec.text_patterns)
        return ObservationFilter(frozenset(keys), tuple(sorted(patterns)))

    def __post_init__(self) -> None:
        for program in self.programs:
            condition = program.catalog_condition
            self.drug_classes[program.id] = {
                name: drug.classes[condition] for name, drug in self.catalog.drugs.items() if condition in drug.classes
            }

    def program_drugs(self, program: Program) -> dict[str, str]:
        """Ingredient → class for the program's catalog condition (computed once at load)."""
        return self.drug_classes[program.id]


def _with_triggers(data: dict[str, Any], triggers: dict[str, Any]) -> dict[str, Any]:
    """Append the general trigger rules (mappings/triggers.yaml) to a program, unless it opts out."""
    if not data.get("general_triggers", True) or not triggers:
        return data
    merged = dict(data)
    default_guideline = (data.get("rules") or [{}])[0].get("guideline")
    rules = []
    for rule in triggers.get("rules", []):
        rule = dict(rule)
        if rule.get("guideline") is None:
            rule["guideline"] = default_guideline
        rules.append(rule)
    merged["rules"] = [*data.get("rules", []), *rules]
    for section in ("observations", "conditions", "suggestions"):
        merged[section] = {**triggers.get(section, {}), **data.get(section, {})}
    return merged


def load_knowledge(
    mappings: Path | None = None,
    overrides: dict[str, float] | None = None,
    enabled: list[str] | None = None,
    extra_programs: list[Path] | None = None,
    *,
    rule_kinds: RuleKinds,
) -> Knowledge:
    """Read mappings/ (or another folder of the same layout) and check it against the rule kinds (the rule
    registry): unknown override keys and content that does not check (ProgramError) fail loudly, here."""
    root = mappings or data_dir("mappings")
    catalog = load_catalog(root / "drugs")
    safety, extra_drugs = load_safety(root / "drugs")
    drugs = dict(catalog.drugs)
    by_code = {code: set(names) for code, names in catalog.by_code.items()}
    for extra in extra_drugs:
        drugs.setdefault(extra.name, Drug(extra.name, extra.rxnorm, extra.verified, extra.source, {}))
        drugs[extra.name].classes[SAFETY_CONDITION] = extra.drug_class
        by_code.setdefault(extra.rxnorm, set()).add(extra.name)
    triggers_path = root / "triggers.yaml"
    triggers = load_yaml(triggers_path.read_text(encoding="utf-8")) if triggers_path.exists() else {}
    paths = sorted((root / "programs").glob("*.yaml")) + list(extra_programs or [])
    with_triggers = partial(_with_triggers, triggers=triggers)
    loaded: list[tuple[str, Program]] = []
    problems: list[str] = []
    for path in paths:
        try:
            program = load_program(path, rule_kinds, overrides, with_triggers, root / "valuesets")
        except ProgramError as exc:
            problems += exc.problems  # every file's problems at once
            continue
        loaded.append((path.name, program))
    if problems:
        raise ProgramError(problems)
    if enabled:
        loaded = [(name, p) for name, p in loaded if p.id in enabled]
    programs = [program for _, program in loaded]
    known = {p.id for p in programs}
    for key in overrides or {}:
        if key.partition(".")[0] not in known:
            raise ValueError(f"override {key}: no enabled program {key.partition('.')[0]!r}")
    aliases: dict[str, list[str]] = {}
    for program in programs:
        aliases.update(program.drug_aliases)
        for inline in program.drugs:
            existing = drugs.get(inline.name)
            classes = dict(existing.classes) if existing else {}
            classes[program.catalog_condition] = inline.drug_class
            drugs[inline.name] = Drug(inline.name, inline.rxnorm, inline.verified, inline.source, classes)
            for code in [inline.rxnorm, *inline.products]:
                if code:
                    by_code.setdefault(code, set()).add(inline.name)
    merged = DrugCatalog(drugs, {code: frozenset(names) for code, names in by_code.items()}, dict(catalog.aliases))
    knowledge = Knowledge(merged.with_aliases(aliases), tuple(programs), safety)
    for name, program in loaded:
        problems += [f"{name}: {problem}" for problem in drug_name_problems(program, knowledge.program_drugs(program))]
    if problems:
        raise ProgramError(problems)
    return knowledge
