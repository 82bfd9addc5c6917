"""Program definitions (mappings/programs/*.yaml) as validated models; one file = one disease program."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

Status = Literal["second-line-evaluation", "next-line-evaluation", "monitor", "data-needed", "no-action"]
Indicator = Literal["info", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRef(_Strict):
    """A code with the source it was verified in; `verified: false` marks a code we could not check."""

    system: str
    code: str
    display: str = ""
    source: str | None = None
    verified: bool = True

    @property
    def key(self) -> str:
        return f"{self.system}|{self.code}"


class CodeSet(_Strict):
    """Codes listed inline and/or taken from ValueSet expansions copied into mappings/valuesets/."""

    source: str
    codes: list[CodeRef] = Field(default_factory=list)
    valuesets: list[str] = Field(default_factory=list, description="File names under mappings/valuesets/.")

    @cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.codes)


class Scope(_Strict):
    """When a patient belongs to the program: a diagnosis, or treatment that is unambiguous without one."""

    diagnosis: CodeSet
    treatment_classes: list[str] = Field(default_factory=list)


class LineSettings(_Strict):
    regimen_window_days: int = Field(default=28, ge=0)
    era_gap_days: int = Field(default=90, ge=0, description="Refill gap that still continues a drug era.")
    discontinuation_gap_days: int | None = Field(default=None, ge=1)
    new_line_on: Literal["class-change", "drug-change"] = "class-change"
    new_line_on_drop: bool = True
    ignore_classes: list[str] = Field(default_factory=list)


class ObservationSpec(_Strict):
    display: str
    unit: str
    source: str
    codes: list[CodeRef]
    log10_codes: list[CodeRef] = Field(default_factory=list)

    @cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(c.key for c in [*self.codes, *self.log10_codes])

    @cached_property
    def log10_keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.log10_codes)


class Guideline(_Strict):
    label: str
    url: HttpUrl
    citation: str


class Suggestion(_Strict):
    """A card suggestion that creates one resource; the service fills `subject` and references."""

    label: str
    description: str
    is_recommended: bool = False
    resource: dict[str, Any]


class Outcome(_Strict):
    status: Status
    indicator: Indicator = "info"
    summary: str = Field(max_length=139)
    recommendations: list[str] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)
    card: bool = True


class Rule(_Strict):
    id: str
    kind: str
    title: str
    guideline: Guideline
    params: dict[str, Any] = Field(default_factory=dict)
    outcomes: dict[str, Outcome]
    line_end_label: str | None = Field(default=None, description="Why a line ended when this rule fired on it.")


class Program(_Strict):
    id: str
    title: str
    catalog_condition: str
    scope: Scope
    drug_aliases: dict[str, list[str]] = Field(default_factory=dict)
    lines: LineSettings
    observations: dict[str, ObservationSpec] = Field(default_factory=dict)
    parameters: dict[str, float] = Field(default_factory=dict)
    rules: list[Rule]
    suggestions: dict[str, Suggestion] = Field(default_factory=dict)
    override_reasons: list[CodeRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> Program:
        for rule in self.rules:
            for outcome in rule.outcomes.values():
                missing = [s for s in outcome.suggestions if s not in self.suggestions]
                if missing:
                    raise ValueError(f"rule {rule.id}: unknown suggestions {missing}")
            for name, value in rule.params.items():
                if isinstance(value, str) and value.startswith("$") and value[1:] not in self.parameters:
                    raise ValueError(f"rule {rule.id}: param {name} names unknown parameter {value}")
        return self

    def param(self, rule: Rule, name: str) -> Any:
        """A rule parameter, resolving `$name` against the program's (overridable) parameters."""
        value = rule.params[name]
        if isinstance(value, str) and value.startswith("$"):
            return self.parameters[value[1:]]
        return value


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


def load_program(path: Path, overrides: dict[str, float] | None = None) -> Program:
    """Parse one program YAML; `overrides` ("<program>.<parameter>" → value) replace parameters."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a program file must hold a mapping")
    _expand_codesets(data, path.parent.parent / "valuesets")
    program_id = data.get("id")
    for key, value in (overrides or {}).items():
        prefix, _, name = key.partition(".")
        if prefix != program_id:
            continue
        parameters = data.setdefault("parameters", {})
        if name not in parameters:
            raise ValueError(f"override {key}: program {program_id} has no parameter {name!r}")
        parameters[name] = value
    return Program.model_validate(data)
