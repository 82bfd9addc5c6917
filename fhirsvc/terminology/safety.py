"""Drug safety tables from mappings/drugs/: not for use in pregnancy, and drug-drug interactions."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PregnancyFlag:
    drug: str
    advice: str
    source: str
    verified: bool


@dataclass(frozen=True)
class Interaction:
    """`perpetrator` changes exposure to each of `victims` (e.g. rifampin induces CYP3A/UGT1A1)."""

    perpetrator: str
    victims: frozenset[str]
    effect: str
    source: str
    verified: bool


@dataclass(frozen=True)
class SafetyTables:
    pregnancy: dict[str, PregnancyFlag]
    interactions: tuple[Interaction, ...]


@dataclass(frozen=True)
class ExtraDrug:
    """A drug outside the disease programs that the safety tables need to recognise (e.g. rifampin)."""

    name: str
    rxnorm: str
    drug_class: str
    source: str
    verified: bool


def _flag(value: str) -> bool:
    return value.strip().lower() in {"v", "true", "yes", "verified"}


def load_safety(folder: Path) -> tuple[SafetyTables, list[ExtraDrug]]:
    pregnancy: dict[str, PregnancyFlag] = {}
    with (folder / "pregnancy.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            pregnancy[row["drug"].strip()] = PregnancyFlag(
                row["drug"].strip(), row["advice"].strip(), row["source"].strip(), _flag(row["verified"])
            )
    interactions: list[Interaction] = []
    extra: dict[str, ExtraDrug] = {}
    with (folder / "interactions.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            name = row["perpetrator"].strip()
            if row["perpetrator_rxnorm"].strip():
                extra[name] = ExtraDrug(
                    name,
                    row["perpetrator_rxnorm"].strip(),
                    row["perpetrator_class"].strip(),
                    row["code_source"].strip(),
                    _flag(row["code_verified"]),
                )
            interactions.append(
                Interaction(
                    perpetrator=name,
                    victims=frozenset(v.strip() for v in row["victims"].split(";") if v.strip()),
                    effect=row["effect"].strip(),
                    source=row["source"].strip(),
                    verified=_flag(row["verified"]),
                )
            )
    return SafetyTables(pregnancy, tuple(interactions)), list(extra.values())
