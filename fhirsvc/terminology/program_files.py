"""Program files → checked Program models: YAML, value set expansions, typed rule parameters, every name resolved."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fhirsvc.terminology.programs import DosingInterval, LateAddition, Program, Rule
from fhirsvc.terminology.rule_params import NameUse, RuleKinds, RuleKindSchema, names_used

# libyaml's loader parses the program files about 11 times faster than the pure-Python one (start-up time).
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)


def expansion_codes(path: Path) -> list[dict[str, Any]]:
    """The codes of a ValueSet expansion file, each citing the ValueSet URL and version as its source."""
    valueset = json.loads(path.read_text(encoding="utf-8"))
    source = f"{valueset.get('url', path.name)} version {valueset.get('version', '?')}"
    return [
        {"system": c["system"], "code": c["code"], "display": c.get("display", ""), "source": source}
        for c in valueset.get("expansion", {}).get("contains", [])
    ]


def _expand_codesets(node: Any, valueset_dir: Path) -> None:
    """Fill every CodeSet's `codes` from its `valuesets` files (in place, before validation)."""
    if isinstance(node, dict):
        if "valuesets" in node and "source" in node:
            known = {(c.get("system"), c.get("code")) for c in node.setdefault("codes", [])}
            for name in node["valuesets"]:
                for code in expansion_codes(valueset_dir / name):
                    if (code["system"], code["code"]) not in known:
                        node["codes"].append(code)
        for value in node.values():
            _expand_codesets(value, valueset_dir)
    elif isinstance(node, list):
        for value in node:
            _expand_codesets(value, valueset_dir)


class ProgramError(ValueError):
    """Program content that does not check: every problem found, each naming the file, the rule and the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    @classmethod
    def in_file(cls, file: str, problems: list[str]) -> ProgramError:
        return cls([f"{file}: {problem}" for problem in problems])


def load_program(
    path: Path,
    rule_kinds: RuleKinds,
    overrides: dict[str, float] | None = None,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    valueset_dir: Path | None = None,
) -> Program:
    """Parse and check one program YAML; `overrides` ("<program>.<parameter>" → value) replace parameters.

    Every rule's parameters become its kind's typed model (`$name` resolved against the program's parameters), and
    every name they use must exist: content that does not check raises ProgramError, never a per-patient error.
    """
    data = load_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ProgramError.in_file(path.name, ["a program file must hold a mapping"])
    # Top-level keys starting with "_" only hold YAML anchors shared inside the file.
    data = {key: value for key, value in data.items() if not key.startswith("_")}
    own_rules = {rule.get("id") for rule in data.get("rules") or [] if isinstance(rule, dict)}
    if transform is not None:
        data = transform(data)
    _expand_codesets(data, valueset_dir or path.parent.parent / "valuesets")
    program_id = data.get("id")
    for key, value in (overrides or {}).items():
        prefix, _, name = key.partition(".")
        if prefix != program_id:
            continue
        parameters = data.setdefault("parameters", {})
        if name not in parameters:
            raise ValueError(f"override {key}: program {program_id} has no parameter {name!r}")
        parameters[name] = value
    problems = _type_params(data, rule_kinds, own_rules)
    if problems:
        raise ProgramError.in_file(path.name, problems)
    try:
        program = Program.model_validate(data)
    except ValidationError as exc:
        raise ProgramError.in_file(path.name, _described(exc, data)) from None
    problems = rule_problems(program, rule_kinds, own_rules)
    if problems:
        raise ProgramError.in_file(path.name, problems)
    return program


def _rule_label(rule_id: object, kind: object, own_rules: set[Any]) -> str:
    origin = "" if rule_id in own_rules else ", a general trigger"
    return f"rule {rule_id} ({kind}{origin})"


def _type_params(data: dict[str, Any], rule_kinds: RuleKinds, own_rules: set[Any]) -> list[str]:
    """Replace every rule's `params` mapping by its kind's model, in place; the problems found instead."""
    parameters = data.get("parameters") or {}
    rules = data.get("rules")
    if not isinstance(rules, list):
        return []  # the schema reports it
    problems: list[str] = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue  # the schema reports it
        kind = rule.get("kind")
        label = _rule_label(rule.get("id"), kind, own_rules)
        schema = rule_kinds.get(kind) if isinstance(kind, str) else None
        if schema is None:
            problems.append(f"{label}: kind: unknown rule kind {kind!r} (known kinds: {', '.join(sorted(rule_kinds))})")
            continue
        raw = rule.get("params") or {}
        if not isinstance(raw, dict):
            problems.append(f"{label}: params: must be a mapping of parameter names to values")
            continue
        resolved: dict[str, Any] = {}
        for name, value in raw.items():
            if isinstance(value, str) and value.startswith("$"):
                if value[1:] not in parameters:
                    problems.append(f"{label}: params.{name}: names unknown program parameter {value}")
                    continue
                value = parameters[value[1:]]
            resolved[name] = value
        try:
            typed = schema.params.model_validate(resolved)
        except ValidationError as exc:
            problems += [
                f"{label}: {_location(('params', *e['loc']))}: {_param_problem(e, schema)}" for e in exc.errors()
            ]
            continue
        rules[index] = {**rule, "params": typed}
    return problems


def _location(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _param_problem(error: Any, schema: RuleKindSchema) -> str:
    if error["type"] == "missing":
        return "missing (a required parameter)"
    if error["type"] == "extra_forbidden":
        return f"unknown parameter (the kind takes: {', '.join(schema.params.model_fields)})"
    if error["type"] == "value_error":  # a check across parameters: the message names them
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{error['msg']} (got {error['input']!r})"


def _described(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """Pydantic's errors, each with the rule it is in named by id rather than by position."""
    found = data.get("rules")
    rules: list[Any] = found if isinstance(found, list) else []
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        message = str(error["msg"]).removeprefix("Value error, ")
        rule = rules[loc[1]] if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int) else None
        if isinstance(rule, dict):
            problems.append(f"rule {rule.get('id')}: {_location(loc[2:]) or '(the rule)'}: {message}")
        else:
            problems.append(f"{_location(loc)}: {message}" if loc else message)
    return problems


def rule_problems(program: Program, rule_kinds: RuleKinds, own_rules: set[Any]) -> list[str]:
    """Outcomes a rule lacks or its kind never produces, and names its parameters use that the program lacks."""
    problems: list[str] = []
    for rule in program.rules:
        schema = rule_kinds[rule.kind]
        label = _rule_label(rule.id, rule.kind, own_rules)
        uses = list(names_used(rule.params))
        produced = schema.outcomes | rule.params.conditional_outcomes()
        named = {use.value for use in uses if use.kind == "outcome"}
        missing = sorted(produced - rule.outcomes.keys())
        if missing:
            problems.append(f"{label}: outcomes: missing {missing} (the kind produces them)")
        never = sorted(rule.outcomes.keys() - produced - schema.optional_outcomes - named)
        if never:
            problems.append(f"{label}: outcomes: {never} never produced by the kind")
        problems += [f"{label}: {use.field}: {p}" for use in uses if (p := _unknown_name(program, rule, use))]
    return problems


def _unknown_name(program: Program, rule: Rule, use: NameUse) -> str | None:
    """Why a name a parameter uses does not resolve in the program, or None (drugs: see `drug_name_problems`)."""
    defined: dict[str, Any] = {
        "observation": program.observations,
        "condition set": program.conditions,
        "flag": program.flags,
        "outcome": rule.outcomes,
    }
    if use.kind in defined and use.value not in defined[use.kind]:
        return f"unknown {use.kind} {use.value!r} (defined: {', '.join(sorted(defined[use.kind]))})"
    if use.kind == "value set":
        spec = program.observations.get(use.observation or "")
        if spec is not None and use.value not in spec.values:
            return (
                f"unknown value set {use.value!r} of observation {use.observation} (defined: {', '.join(spec.values)})"
            )
    return None


def _settings_names(program: Program) -> list[tuple[str, str, str]]:
    """(where, "drug" or "drug class", name) for every drug and class the program's scope and line settings name."""
    settings = program.lines
    used = [(f"scope.treatment_classes[{i}]", "drug class", c) for i, c in enumerate(program.scope.treatment_classes)]
    for field in ("ignore_classes", "gap_exempt_classes", "core_classes"):
        used += [(f"lines.{field}[{i}]", "drug class", c) for i, c in enumerate(getattr(settings, field))]
    for i, group in enumerate(settings.substitutions):
        used += [(f"lines.substitutions[{i}][{j}]", "drug", d) for j, d in enumerate(group)]
    spans: list[tuple[str, LateAddition | DosingInterval]] = [
        (f"lines.late_additions[{i}]", late) for i, late in enumerate(settings.late_additions)
    ]
    if settings.coverage is not None:
        spans += [(f"lines.coverage.intervals[{i}]", span) for i, span in enumerate(settings.coverage.intervals)]
    for where, span in spans:
        used += [(f"{where}.drugs[{j}]", "drug", d) for j, d in enumerate(span.drugs)]
        used += [(f"{where}.classes[{j}]", "drug class", c) for j, c in enumerate(span.classes)]
    step = program.step_therapy
    if step is not None:
        for field in ("first_line_drugs", "next_line_drugs"):
            used += [(f"step_therapy.{field}[{i}]", "drug", d) for i, d in enumerate(getattr(step, field))]
        for field in ("first_line_classes", "next_line_classes"):
            used += [(f"step_therapy.{field}[{i}]", "drug class", c) for i, c in enumerate(getattr(step, field))]
    return used


def drug_name_problems(program: Program, drug_classes: dict[str, str]) -> list[str]:
    """Drug and drug class names the program uses (its line settings, its rules' parameters and recommendations)
    that its drugs (ingredient → class) do not include."""
    known = {"drug": drug_classes.keys(), "drug class": set(drug_classes.values())}
    problems = [
        f"{where}: unknown {kind} {value!r} (not among the {program.id} drugs)"
        for where, kind, value in _settings_names(program)
        if value not in known[kind]
    ]
    for rule in program.rules:
        uses = [(use.field, use.kind, use.value) for use in names_used(rule.params)]
        for name, outcome in rule.outcomes.items():
            for index, recommendation in enumerate(outcome.recommendations):
                when = recommendation.when
                if when is None:
                    continue
                where = f"outcomes.{name}.recommendations[{index}].when"
                uses += [(f"{where}.line_drugs_any", "drug", d) for d in when.line_drugs_any]
                uses += [(f"{where}.line_drugs_none", "drug", d) for d in when.line_drugs_none]
                uses += [(f"{where}.line_classes_any", "drug class", c) for c in when.line_classes_any]
                uses += [(f"{where}.line_classes_none", "drug class", c) for c in when.line_classes_none]
        problems += [
            f"rule {rule.id} ({rule.kind}): {where}: unknown {kind} {value!r} (not among the {program.id} drugs)"
            for where, kind, value in uses
            if kind in known and value not in known[kind]
        ]
    return problems
