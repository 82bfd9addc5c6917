#!/usr/bin/env python3
"""Derive product and brand tables from the RxNorm names in the value sets and catalog we ship.

Reads (all under mappings/):
  valuesets/*.json              VSAC expansions; every RxNorm code with its RxNorm name (display)
  drugs/drug-catalog.csv        ingredient names (the unit of all regimen logic)
  drugs/ingredient-synonyms.csv other spellings of those names ("insulin aspart" for "insulin aspart, human")
  drugs/combination-products.csv product names (SCD/SBD) with their ingredients
  drugs/brand-names-curated.csv well-known brands not found in those names, each citing its label

Writes:
  drugs/vsac-products.csv  rxcui,name,ingredients,unmatched,source: every RxNorm product of the value sets whose
                           name contains catalog ingredients (a premix such as 106892, NPH 70 / regular 30, lists
                           both); `unmatched` names the ingredients of the product the catalog does not know.
  drugs/brand-names.csv    brand,ingredients,rxcui,source,verified: the bracketed brand of RxNorm SBD and BPCK
                           names ("... Injectable Suspension [Humulin]") with the ingredients of those products,
                           merged with the curated brands.

Stdlib only and deterministic: run `python mappings/tools/derive_drug_tables.py` after changing any input and
commit the output. Brands left out, and why, are printed.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MAPPINGS = Path(__file__).resolve().parent.parent
DRUGS = MAPPINGS / "drugs"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# RxNorm names that would match a catalog ingredient by their words but are another substance.
ANIMAL_INSULIN = re.compile(r"\b(pork|beef|lente)\b", re.IGNORECASE)
# Co-ingredients outside every program that do not hide part of a regimen (Juvisync: sitagliptin / simvastatin).
IGNORED_COINGREDIENTS = {"simvastatin"}
SKIPPED_BRANDS = {
    "vetsulin": "veterinary pork lente insulin (not for people)",
}
PACK_WORDS = {"kit", "starter", "titration", "pack", "-"}
_NON_WORD = re.compile(r"[^a-z0-9]+")
_BRAND = re.compile(r"\[([^\]]+)\]\s*$")
_BRACKETS = re.compile(r"\[[^\]]*\]")


def normalise(text: str) -> str:
    """The catalog's whole-word form: lower-case words joined by single spaces, padded with spaces."""
    return f" {_NON_WORD.sub(' ', text.lower()).strip()} "


class Matcher:
    """Longest-first whole-word matching of ingredient names (the same rule as the service's DrugCatalog)."""

    def __init__(self, names: dict[str, frozenset[str]]) -> None:
        self.needles = sorted(names.items(), key=lambda item: (-len(item[0]), item[0]))

    def __call__(self, text: str) -> set[str]:
        haystack = normalise(text)
        found: set[str] = set()
        for needle, drugs in self.needles:
            if needle in haystack:
                found |= drugs
                haystack = haystack.replace(needle, " ")
        return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def ingredient_names() -> dict[str, frozenset[str]]:
    names = {normalise(row["drug"]): frozenset({row["drug"]}) for row in read_csv(DRUGS / "drug-catalog.csv")}
    for row in read_csv(DRUGS / "ingredient-synonyms.csv"):
        names[normalise(row["synonym"])] = frozenset(row["drugs"].split(";"))
    return names


def brand_of(display: str) -> str | None:
    """The bracketed brand of an SBD ("... [Lantus]") or BPCK ("{...} Pack [Afrezza 180 - 90 (8 UNT)]")."""
    found = _BRAND.search(display)
    if not found:
        return None
    brand = found.group(1).strip()
    if display.startswith("{"):
        words = []
        for word in brand.split():
            if word.lower() in PACK_WORDS or any(ch.isdigit() for ch in word):
                break
            words.append(word)
        brand = " ".join(words)
    return brand or None


def unmatched_parts(core: str, match: Matcher) -> list[str]:
    """Ingredient parts of a product name ("repaglinide 1 MG / metformin ...") that no catalog name covers."""
    missing: list[str] = []
    for part in re.split(r"\s/\s", core):
        if match(part):
            continue
        words: list[str] = []
        for word in part.strip("{}() ").split():
            if any(ch.isdigit() for ch in word):
                if words:
                    break
                continue
            words.append(word)
        name = " ".join(w for w in words if w[0].islower())
        if name and name not in IGNORED_COINGREDIENTS:
            missing.append(name)
    return sorted(set(missing))


def expansions() -> list[tuple[str, list[dict[str, str]]]]:
    """(label, RxNorm codes) per value set file that holds any."""
    found = []
    for path in sorted((MAPPINGS / "valuesets").glob("*.json")):
        valueset = json.loads(path.read_text(encoding="utf-8"))
        codes = [c for c in valueset.get("expansion", {}).get("contains", []) if c.get("system") == RXNORM]
        if codes:
            label = f"VSAC {valueset['id']} {valueset.get('name') or valueset.get('title') or path.stem}"
            found.append((f"{label} v{valueset.get('version', '?')}", codes))
    return found


@dataclass
class Product:
    name: str
    ingredients: set[str]
    unmatched: list[str]
    sources: set[str] = field(default_factory=set)


def main() -> int:
    names = ingredient_names()
    match = Matcher(names)
    products: dict[str, Product] = {}
    brands: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    skipped: dict[str, str] = {}
    partial: set[str] = set()

    def see(code: str, display: str, source: str, keep_product: bool) -> None:
        brand = brand_of(display)
        core = _BRACKETS.sub(" ", display)
        found = set() if ANIMAL_INSULIN.search(core) else match(core)
        if brand and brand.lower() in SKIPPED_BRANDS:
            skipped[brand] = SKIPPED_BRANDS[brand.lower()]
            return
        if not found:
            if brand:
                skipped.setdefault(brand, "no catalog ingredient in its products")
            return
        unknown = unmatched_parts(core, match)
        if keep_product:
            products.setdefault(code, Product(display, found, unknown)).sources.add(source)
        if brand:
            if unknown:
                # Reading the brand as its known ingredients alone would hide part of the regimen.
                skipped[brand] = f"ingredients unknown to the catalog: {', '.join(unknown)}"
                partial.add(brand)
            if brand in partial:
                brands.pop(brand, None)
                return
            if normalise(brand) in names:
                skipped[brand] = "the 'brand' is an ingredient name (a generic product)"
                return
            brands[brand]["ingredients"] |= found
            brands[brand]["rxcui"].add(code)
            brands[brand]["source"].add(source)

    for label, codes in expansions():
        for coding in codes:
            see(coding["code"], coding.get("display", ""), label, keep_product=True)
    for row in read_csv(DRUGS / "combination-products.csv"):
        see(row["rxcui"], row["name"], "mappings/drugs/combination-products.csv", keep_product=False)

    with (DRUGS / "vsac-products.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["rxcui", "name", "ingredients", "unmatched", "source"])
        for code in sorted(products, key=int):
            entry = products[code]
            ingredients, unmatched = ";".join(sorted(entry.ingredients)), ";".join(entry.unmatched)
            out.writerow([code, entry.name, ingredients, unmatched, " | ".join(sorted(entry.sources))])

    rows: dict[str, list[str]] = {}
    for brand, found in brands.items():
        rows[normalise(brand)] = [
            brand,
            ";".join(sorted(found["ingredients"])),
            ";".join(sorted(found["rxcui"], key=int)),
            "RxNorm SBD/BPCK names in " + " | ".join(sorted(found["source"])),
            "true",
        ]
    catalog = {d for drugs in names.values() for d in drugs}
    for row in read_csv(DRUGS / "brand-names-curated.csv"):
        unknown = [d for d in row["ingredients"].split(";") if d not in catalog]
        if unknown:
            raise SystemExit(f"brand-names-curated.csv: {row['brand']} names drugs not in the catalog: {unknown}")
        key = normalise(row["brand"])
        if key in rows:
            if rows[key][1] != row["ingredients"]:
                raise SystemExit(f"{row['brand']}: curated {row['ingredients']} but RxNorm names say {rows[key][1]}")
            continue
        rows[key] = [row["brand"], row["ingredients"], "", row["source"], row["verified"]]
    with (DRUGS / "brand-names.csv").open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["brand", "ingredients", "rxcui", "source", "verified"])
        for key in sorted(rows):
            out.writerow(rows[key])

    for brand in sorted(set(skipped) - {r[0] for r in rows.values()}, key=str.lower):
        print(f"skipped brand {brand}: {skipped[brand]}", file=sys.stderr)
    print(f"{len(products)} products, {len(rows)} brands", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
