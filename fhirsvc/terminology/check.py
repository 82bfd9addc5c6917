"""`fhirsvc mappings check`: schema, code formats and check digits, ICD-10-CM existence, drug verification."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fhirsvc.terminology.knowledge import Knowledge, load_knowledge
from fhirsvc.terminology.paths import data_dir
from fhirsvc.terminology.program_files import ProgramError
from fhirsvc.terminology.programs import CodeRef
from fhirsvc.terminology.rule_params import RuleKinds

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RADLEX = "http://radlex.org"
LOCAL_PREFIX = "urn:fhirsvc:"

_LOINC = re.compile(r"^(LA|LP|LL)?(\d{1,8})-(\d)$")
_SNOMED = re.compile(r"^\d{6,18}$")
_ICD10CM = re.compile(r"^[A-TV-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?$")
_RXNORM = re.compile(r"^\d{1,8}$")
_RADLEX = re.compile(r"^RID\d+$")

# Verhoeff tables (SNOMED CT identifiers end in a Verhoeff check digit; SNOMED CT TIG, section 6.7).
_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def verhoeff_valid(number: str) -> bool:
    check = 0
    for index, digit in enumerate(reversed(number)):
        check = _D[check][_P[index % 8][int(digit)]]
    return check == 0


def loinc_check_digit(digits: str) -> int:
    """LOINC mod-10 check digit (Luhn over the code's digits; LOINC Users' Guide, appendix)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value // 10 + value % 10
    return (10 - total % 10) % 10


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    checked_codes: int = 0
    icd10cm_release: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def code_problem(code: CodeRef, icd10cm_valid: Any, icd10cm_leaf: Any = None) -> str | None:
    """Why a code is malformed for its system (or an ICD-10-CM heading not marked as one), or None."""
    system, value = code.system, code.code
    if system == LOINC:
        match = _LOINC.match(value)
        if not match:
            return "not a LOINC code"
        # Only term codes carry the mod-10 check digit; answer (LA), part (LP) and list (LL) codes do not
        # follow it (LA33-6 "Yes"), so those are format-checked only.
        if match.group(1) is None and int(match.group(3)) != loinc_check_digit(match.group(2)):
            return "LOINC check digit is wrong"
    elif system == SNOMED:
        if not _SNOMED.match(value) or not verhoeff_valid(value):
            return "not a SNOMED CT identifier (format or Verhoeff check digit)"
    elif system == ICD10CM:
        if not _ICD10CM.match(value):
            return "not ICD-10-CM format"
        if not icd10cm_valid(value):
            return "not in the installed ICD-10-CM code table"
        # Claims and problem lists carry billable leaf codes; a category (G35 since FY2026) only matches older
        # records, so keeping one must be a decision (`heading: true`), not an oversight.
        if icd10cm_leaf is not None and not code.heading and not icd10cm_leaf(value):
            return "an ICD-10-CM heading, not a billable code (mark it `heading: true` to keep it)"
    elif system == RXNORM:
        if not _RXNORM.match(value):
            return "not an RxNorm RXCUI"
    elif system == RADLEX:
        if not _RADLEX.match(value):
            return "not a RadLex RID"
    elif system.startswith(LOCAL_PREFIX):
        # Our own code systems (override reasons) and placeholders; placeholders carry verified: false.
        if not re.match(r"^[a-z0-9][a-z0-9-]*$", value):
            return "local codes are lower-case words joined by hyphens"
    elif system == "http://www.genenames.org/geneId":
        if not re.match(r"^HGNC:\d+$", value):
            return "not an HGNC id"
    else:
        return f"unknown code system {system!r}"
    return None


def _codes(node: Any, path: str) -> Iterator[tuple[str, CodeRef]]:
    """Every CodeRef in a validated program, with where it sits."""
    if isinstance(node, CodeRef):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _codes(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _codes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _codes(value, f"{path}[{index}]")


def icd10cm_release() -> str:
    """Which ICD-10-CM table `simple-icd-10-cm` installed (its data file names the CMS release)."""
    from simple_icd_10_cm import simple_icd_10_cm as table_module

    package = f"simple-icd-10-cm {metadata.version('simple-icd-10-cm')}"
    table = str(getattr(table_module, "_classification_data_package_file_name", ""))
    return f"{package} ({table})" if table else package


def check_mappings(mappings: Path | None = None, *, rule_kinds: RuleKinds) -> CheckReport:
    """Everything the service checks when it loads (rules against their kinds included), then codes and drugs."""
    import simple_icd_10_cm  # imported here: it loads the whole code table

    from fhirsvc.fhir.resources import InvalidResource, validate

    report = CheckReport(icd10cm_release=icd10cm_release())
    try:
        knowledge: Knowledge = load_knowledge(mappings, rule_kinds=rule_kinds)
    except ProgramError as exc:
        report.errors += [f"schema: {problem}" for problem in exc.problems]
        return report
    except (ValidationError, ValueError, yaml.YAMLError) as exc:
        report.errors.append(f"schema: {exc}")
        return report
    for program in knowledge.programs:
        for path, code in _codes(program, program.id):
            report.checked_codes += 1
            problem = code_problem(code, simple_icd_10_cm.is_valid_item, simple_icd_10_cm.is_leaf)
            if problem:
                report.errors.append(f"{path}: {code.system}|{code.code}: {problem}")
            if not code.verified:
                report.unverified.append(f"{path}: {code.system}|{code.code} ({code.source or 'no source'})")
        for key, suggestion in program.suggestions.items():
            try:
                validate({**suggestion.resource, "subject": {"reference": "Patient/check"}})
            except InvalidResource as exc:
                report.errors.append(f"{program.id}.suggestions.{key}: {exc}")
        for drug in knowledge.program_drugs(program):
            entry = knowledge.catalog.drugs[drug]
            if entry.verified and not entry.rxnorm:
                report.errors.append(f"{program.id}: drug {drug} is marked verified but has no ingredient code")
            if not entry.verified:
                report.unverified.append(f"{program.id}: drug {drug} ingredient code {entry.rxnorm or '-'} unverified")
            if entry.rxnorm and not _RXNORM.match(entry.rxnorm):
                report.errors.append(f"{program.id}: drug {drug} ingredient code {entry.rxnorm!r} is not an RXCUI")
    _check_brands((mappings or data_dir("mappings")) / "drugs", knowledge, report)
    return report


def _check_brands(folder: Path, knowledge: Knowledge, report: CheckReport) -> None:
    """Brand rows must name catalog drugs (else they are silently unused); unchecked brands are listed."""
    path = folder / "brand-names.csv"
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            unknown = [n for n in row["ingredients"].split(";") if n not in knowledge.catalog.drugs]
            if unknown:
                report.errors.append(f"brand-names.csv: {row['brand']} names drugs not in the catalog: {unknown}")
            if row.get("verified", "").strip().lower() != "true":
                report.unverified.append(f"brand {row['brand']} -> {row['ingredients']} ({row['source']})")
