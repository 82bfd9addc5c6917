"""Drug terminology from real-world records: insulin products, MS therapies, brand names in text-only entries."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fhirsvc.terminology.catalog import load_catalog
from fhirsvc.terminology.knowledge import Knowledge
from fhirsvc.terminology.paths import data_dir

DRUGS = data_dir("mappings") / "drugs"


def _classes(knowledge: Knowledge, program: str, names: frozenset[str]) -> set[str]:
    return {knowledge.program_drugs(next(p for p in knowledge.programs if p.id == program))[n] for n in names}


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("106892", {"insulin isophane", "insulin, regular, human"}),  # Humulin 70/30: a premix is both
        ("311048", {"insulin isophane", "insulin, regular, human"}),  # human 70/30, generic
        ("259111", {"insulin lispro", "insulin lispro protamine, human"}),  # Humalog Mix 75/25
        ("260265", {"insulin lispro", "insulin lispro protamine, human"}),  # Humalog Mix 50/50
        ("351297", {"insulin aspart, human", "insulin aspart protamine, human"}),  # NovoLog Mix 70/30
        ("1654910", {"insulin, regular, human"}),  # Afrezza, inhaled
        ("311034", {"insulin, regular, human"}),  # regular human, vial
        ("485210", {"insulin glulisine, human"}),
        ("2563976", {"insulin glargine"}),  # glargine-yfgn (Semglee)
        ("2380231", {"insulin lispro"}),  # lispro-aabc (Lyumjev)
        ("1860172", {"insulin degludec", "liraglutide"}),  # Xultophy: insulin and a GLP-1 RA
    ],
)
def test_insulin_products_resolve_to_their_ingredients(knowledge: Knowledge, code: str, expected: set[str]) -> None:
    found = knowledge.catalog.ingredients_for_code(code)
    assert found == expected
    assert "insulin" in _classes(knowledge, "t2d", found)


@pytest.mark.parametrize(
    ("code", "drug"),
    [
        ("1012892", "fingolimod"),
        ("1012895", "fingolimod"),
        ("1310520", "teriflunomide"),
        ("1310533", "teriflunomide"),
        ("84375", "glatiramer"),
        ("1487361", "glatiramer"),
        ("1373478", "dimethyl fumarate"),
        ("2261783", "diroximel fumarate"),
    ],
)
def test_ms_ingredient_and_product_codes_resolve(knowledge: Knowledge, code: str, drug: str) -> None:
    assert knowledge.catalog.ingredients_for_code(code) == {drug}


def test_every_fda_approved_ms_therapy_has_a_class(knowledge: Knowledge) -> None:
    ms = knowledge.program_drugs(next(p for p in knowledge.programs if p.id == "ms"))
    therapies = {
        "interferon beta-1a": "interferon-beta",
        "interferon beta-1b": "interferon-beta",
        "peginterferon beta-1a": "interferon-beta",
        "glatiramer": "glatiramer",
        "teriflunomide": "teriflunomide",
        "dimethyl fumarate": "fumarate",
        "diroximel fumarate": "fumarate",
        "monomethyl fumarate": "fumarate",
    }
    assert {name: ms.get(name) for name in therapies} == therapies
    for name in ("fingolimod", "siponimod", "ozanimod", "ponesimod", "cladribine", "natalizumab", "alemtuzumab"):
        assert name in ms
    for name in ("ocrelizumab", "ofatumumab", "ublituximab", "mitoxantrone"):
        assert name in ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Xeloda 500 mg tablet", {"capecitabine"}),
        ("GILENYA 0.5 MG capsule", {"fingolimod"}),
        ("Aubagio 14mg daily", {"teriflunomide"}),
        ("Copaxone 40 mg/mL three times a week", {"glatiramer"}),
        ("Glatopa 20 MG/ML", {"glatiramer"}),
        ("Tecfidera 240 mg BID", {"dimethyl fumarate"}),
        ("Vumerity", {"diroximel fumarate"}),
        ("Bafiertam", {"monomethyl fumarate"}),
        ("Tysabri infusion", {"natalizumab"}),
        ("Ocrevus 600 mg IV", {"ocrelizumab"}),
        ("Ocrevus Zunovo", {"ocrelizumab"}),
        ("Kesimpta pen", {"ofatumumab"}),
        ("Mavenclad 10 mg", {"cladribine"}),
        ("Lemtrada", {"alemtuzumab"}),
        ("Avonex pen", {"interferon beta-1a"}),
        ("Rebif Rebidose", {"interferon beta-1a"}),
        ("Betaseron", {"interferon beta-1b"}),
        ("Plegridy", {"peginterferon beta-1a"}),
        ("Mayzent", {"siponimod"}),
        ("Zeposia 0.92 mg", {"ozanimod"}),
        ("Ponvory", {"ponesimod"}),
        ("Briumvi", {"ublituximab"}),
        ("Lantus SoloStar 100 units/mL", {"insulin glargine"}),
        ("Humulin R U-500", {"insulin, regular, human"}),
        ("Humulin N KwikPen", {"insulin isophane"}),
        ("Humulin 70/30", {"insulin isophane", "insulin, regular, human"}),
        ("Novolin 70/30", {"insulin isophane", "insulin, regular, human"}),
        ("NovoLog Mix 70/30 FlexPen", {"insulin aspart, human", "insulin aspart protamine, human"}),
        ("NovoLog FlexPen", {"insulin aspart, human"}),
        ("insulin aspart 100 units/mL", {"insulin aspart, human"}),
        ("NPH insulin 20 units at bedtime", {"insulin isophane"}),
        ("Janumet 50/1000", {"sitagliptin", "metformin"}),
        ("Biktarvy", {"bictegravir", "emtricitabine", "tenofovir alafenamide"}),  # program aliases keep working
    ],
)
def test_text_only_medications_resolve_by_brand(knowledge: Knowledge, text: str, expected: set[str]) -> None:
    assert knowledge.catalog.ingredients_for_text(text) == expected


@pytest.mark.parametrize("text", ["Lantusville clinic", "humulinR", "Actos de la reunión", "Xelodas", "copaxones"])
def test_brands_match_whole_words_only(knowledge: Knowledge, text: str) -> None:
    # "Actos" is a brand and a Spanish word: only the whole word "actos" matches, which is the brand.
    found = knowledge.catalog.ingredients_for_text(text)
    assert found == ({"pioglitazone"} if text.startswith("Actos") else set())


def test_brand_aliases_load_without_the_programs() -> None:
    catalog = load_catalog(DRUGS)
    assert catalog.ingredients_for_text("Xeloda") == {"capecitabine"}
    assert catalog.ingredients_for_code("106892") == {"insulin isophane", "insulin, regular, human"}


def test_a_brand_naming_an_unknown_drug_is_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "drugs"
    shutil.copytree(DRUGS, folder)
    with (folder / "brand-names.csv").open("a", encoding="utf-8") as handle:
        handle.write("Prandimet,metformin;repaglinide-unknown,,test,false\n")
    catalog = load_catalog(folder)
    assert catalog.ingredients_for_text("Prandimet") == set()


def test_a_product_with_an_ingredient_unknown_to_the_catalog_is_not_read_in_part(tmp_path: Path) -> None:
    folder = tmp_path / "drugs"
    shutil.copytree(DRUGS, folder)
    with (folder / "vsac-products.csv").open("a", encoding="utf-8") as handle:
        handle.write("99999991,metformin / someglinide Oral Tablet,metformin,someglinide,test\n")
        handle.write("99999992,metformin Oral Tablet,metformin,,test\n")
    catalog = load_catalog(folder)
    assert catalog.ingredients_for_code("99999991") == set()
    assert catalog.ingredients_for_code("99999992") == {"metformin"}


def _table(name: str) -> list[dict[str, str]]:
    with (DRUGS / name).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_table_names_catalog_drugs_only() -> None:
    drugs = {row["drug"] for row in _table("drug-catalog.csv")}
    for table, column in (("brand-names.csv", "ingredients"), ("ingredient-synonyms.csv", "drugs")):
        for row in _table(table):
            assert set(row[column].split(";")) <= drugs, (table, row)
    for row in _table("vsac-products.csv"):
        assert set(row["ingredients"].split(";")) <= drugs, row


def test_derived_tables_are_up_to_date_and_deterministic(tmp_path: Path) -> None:
    copy = tmp_path / "mappings"
    shutil.copytree(data_dir("mappings"), copy)
    script = copy / "tools" / "derive_drug_tables.py"
    for _ in range(2):
        subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
        for name in ("vsac-products.csv", "brand-names.csv"):
            assert (copy / "drugs" / name).read_bytes() == (DRUGS / name).read_bytes(), name
