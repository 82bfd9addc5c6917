"""Drug catalog: RxNorm ingredient and product codes and free-text names → ingredient names and classes."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fhirsvc.fhir.concepts import ConceptMemo, codings, concept_text
from fhirsvc.memo import SizedMemo

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# Product code → ingredient tables: fixed-dose combinations, and every product of the shipped VSAC drug value sets
# (mappings/tools/derive_drug_tables.py writes the second).
PRODUCT_TABLES = ("combination-products.csv", "vsac-products.csv")

_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise_name(text: str) -> str:
    """Lower-case words separated by single spaces, padded so whole-word matching is a substring test."""
    return f" {_NON_WORD.sub(' ', text.lower()).strip()} "


@dataclass(frozen=True)
class Drug:
    """One ingredient as the catalog knows it: code, verification status and class per disease program."""

    name: str
    rxnorm: str | None
    verified: bool
    source: str
    classes: dict[str, str] = field(default_factory=dict)  # condition -> drug class


@dataclass
class DrugCatalog:
    """Maps medication codes and names to ingredient names (the unit of all regimen logic)."""

    drugs: dict[str, Drug]
    by_code: dict[str, frozenset[str]]  # RxNorm code (ingredient or product) -> ingredient names
    aliases: dict[str, frozenset[str]] = field(default_factory=dict)  # normalised brand/abbrev -> names

    def __post_init__(self) -> None:
        names = {normalise_name(n): frozenset({n}) for n in self.drugs}
        names.update(self.aliases)
        # Longest first, so "tenofovir alafenamide" wins over "tenofovir".
        self._names = sorted(names.items(), key=lambda item: -len(item[0]))
        # Drugs outside every program (statins, ACE inhibitors) fall back to text matching on every record:
        # the same few texts recur, so the answer is kept (bounded in bytes, as texts are unbounded input).
        self._text_matches: SizedMemo[str, frozenset[str]] = SizedMemo(self._match_text)
        self.ingredients_for_concept: ConceptMemo[frozenset[str]] = ConceptMemo(self._concept_ingredients)

    def ingredients_for_code(self, code: str) -> frozenset[str]:
        return self.by_code.get(code, frozenset())

    def _concept_ingredients(self, concept: object) -> frozenset[str]:
        """A CodeableConcept's ingredients: from its RxNorm codings, else from its text and displays."""
        found: set[str] = set()
        for coding in codings(concept):
            if coding.system == RXNORM or "rxnorm" in coding.system.lower():
                found |= self.ingredients_for_code(coding.code)
        return frozenset(found) if found else self.ingredients_for_text(concept_text(concept))

    def ingredients_for_text(self, text: str) -> frozenset[str]:
        """Whole-word name matching for text-only medications (e.g. "Biktarvy (bictegravir/...) tablet")."""
        return self._text_matches(text)

    def _match_text(self, text: str) -> frozenset[str]:
        haystack = normalise_name(text)
        found: set[str] = set()
        for needle, drugs in self._names:
            if needle in haystack:
                found |= drugs
                haystack = haystack.replace(needle, " ")
        return frozenset(found)

    def with_aliases(self, aliases: dict[str, list[str]]) -> DrugCatalog:
        merged = dict(self.aliases)
        for alias, names in aliases.items():
            unknown = [n for n in names if n not in self.drugs]
            if unknown:
                raise ValueError(f"alias {alias!r} names drugs not in the catalog: {unknown}")
            merged[normalise_name(alias)] = frozenset(names)
        return DrugCatalog(self.drugs, self.by_code, merged)


def load_catalog(folder: Path) -> DrugCatalog:
    """Read drug-catalog.csv, the product tables, synonyms and brand names (each row carries its source)."""
    drugs: dict[str, Drug] = {}
    by_code: defaultdict[str, set[str]] = defaultdict(set)
    with (folder / "drug-catalog.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            name = row["drug"].strip()
            code = row["rxnorm_ingredient"].strip() or None
            existing = drugs.get(name)
            classes = dict(existing.classes) if existing else {}
            classes[row["condition"].strip()] = row["drug_class"].strip()
            drugs[name] = Drug(
                name=name,
                rxnorm=code or (existing.rxnorm if existing else None),
                verified=row["ingredient_status"].strip() == "V" or bool(existing and existing.verified),
                source=row["ingredient_source"].strip() or (existing.source if existing else ""),
                classes=classes,
            )
            if code:
                by_code[code].add(name)
            for product in filter(None, (p.strip() for p in row["product_rxcuis"].split(";"))):
                by_code[product].add(name)
    for table in PRODUCT_TABLES:
        for row in _rows(folder / table):
            if row.get("unmatched"):
                continue  # part of the product is unknown here: reading the rest alone would hide part of a regimen
            members = {n.strip() for n in row["ingredients"].split(";") if n.strip() in drugs}
            if members:
                by_code[row["rxcui"].strip()].update(members)
    return DrugCatalog(drugs, {code: frozenset(names) for code, names in by_code.items()}, _aliases(folder, drugs))


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _aliases(folder: Path, drugs: dict[str, Drug]) -> dict[str, frozenset[str]]:
    """Other spellings (ingredient-synonyms.csv) and brand names (brand-names.csv) → ingredient names.

    Matched like ingredient names: whole words, case-insensitive. A brand naming a drug this catalog lacks is left
    out rather than read as part of its regimen.
    """
    aliases: dict[str, frozenset[str]] = {}
    for table, name, members in (
        ("ingredient-synonyms.csv", "synonym", "drugs"),
        ("brand-names.csv", "brand", "ingredients"),
    ):
        for row in _rows(folder / table):
            names = frozenset(n.strip() for n in row[members].split(";") if n.strip())
            if names and all(n in drugs for n in names):
                aliases[normalise_name(row[name])] = names
    return aliases
