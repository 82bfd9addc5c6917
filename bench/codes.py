"""Real codes for the generator, read from mappings/ (drug catalog, program YAML, value sets) and checked there."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from fhirsvc.terminology.paths import data_dir

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True)
class Code:
    """One coding as it goes into a generated resource."""

    system: str
    code: str
    display: str

    def concept(self, text: str | None = None) -> dict[str, Any]:
        coding = {"system": self.system, "code": self.code, "display": self.display}
        return {"coding": [coding], "text": text or self.display}


class Codes:
    """Looks codes up by name in a mappings folder; an unknown name fails loudly, so the generator stays real."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or data_dir("mappings")
        self._drugs: dict[str, str] = {}
        with (self.root / "drugs" / "drug-catalog.csv").open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("rxnorm_ingredient"):
                    self._drugs.setdefault(row["drug"], row["rxnorm_ingredient"])
        with (self.root / "drugs" / "interactions.csv").open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("perpetrator_rxnorm"):
                    self._drugs.setdefault(row["perpetrator"], row["perpetrator_rxnorm"])
        self._programs: dict[str, dict[str, Any]] = {}

    def program(self, program: str) -> dict[str, Any]:
        if program not in self._programs:
            text = (self.root / "programs" / f"{program}.yaml").read_text(encoding="utf-8")
            self._programs[program] = yaml.safe_load(text)
        return self._programs[program]

    def drug(self, name: str) -> Code:
        """The RxNorm ingredient code of a drug in the catalog (or a perpetrator in interactions.csv)."""
        return Code(RXNORM, self._drugs[name], name)

    def _codes(self, section: dict[str, Any]) -> list[Code]:
        found = [Code(str(c["system"]), str(c["code"]), str(c.get("display", ""))) for c in section.get("codes") or ()]
        for name in section.get("valuesets") or ():
            found += _valueset(self.root / "valuesets" / name)
        return found

    def _pick(self, codes: list[Code], code: str | None, where: str) -> Code:
        for candidate in codes:
            if code is None or candidate.code == code:
                return candidate
        raise KeyError(f"{code or 'a code'} not in {where}")

    def diagnosis(self, program: str, code: str) -> Code:
        """A code of the program's diagnosis scope (inline codes or its value sets)."""
        return self._pick(self._codes(self.program(program)["scope"]["diagnosis"]), code, f"{program} scope")

    def condition(self, program: str, key: str, code: str | None = None) -> Code:
        return self._pick(self._codes(self.program(program)["conditions"][key]), code, f"{program}.conditions.{key}")

    def observation(self, program: str, key: str, code: str | None = None) -> Code:
        section = self.program(program)["observations"][key]
        return self._pick(self._codes(section), code, f"{program}.observations.{key}")

    def value(self, program: str, key: str, value: str) -> Code:
        section = self.program(program)["observations"][key]["values"][value]
        return self._pick(self._codes(section), None, f"{program}.observations.{key}.values.{value}")


@cache
def _valueset(path: Path) -> list[Code]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        Code(str(c["system"]), str(c["code"]), str(c.get("display", "")))
        for c in (data.get("expansion") or {}).get("contains") or ()
    ]


@cache
def default_codes() -> Codes:
    return Codes()
