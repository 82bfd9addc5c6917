"""Structural checks on the clinical fixtures under fixtures/.

* Every JSON FHIR Bundle under fixtures/ validates as FHIR R4B (fhir.resources defaults to R5,
  so the R4B package is used explicitly), is a transaction of PUTs that HAPI FHIR can load as
  is, and belongs to exactly one patient: every Patient/... reference points at the bundle's
  own Patient, and every reference resolves to a resource in the same bundle.
* Every scenario in fixtures/scenarios/*.yaml names an existing fixture file and that file's
  patient, and cites only resources that exist in it.
* Every fixtures/build_<program>.py that exposes ``write_all(root)`` regenerates its files
  byte-for-byte, so the committed fixtures match their generator.
"""

from __future__ import annotations

import datetime as dt
import filecmp
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.bundle import Bundle

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SCENARIO_FILES = sorted((FIXTURES / "scenarios").glob("*.yaml"))
BUILD_SCRIPTS = sorted(FIXTURES.glob("build_*.py"))

ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
URN_UUID_RE = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RELATIVE_REF_RE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9-]{1,64})$")
STATUSES = {
    "second-line-evaluation",
    "next-line-evaluation",
    "add-on-evaluation",
    "monitor",
    "no-action",
    "data-needed",
}
# fixtures/triggers/ (general triggers) and fixtures/lines/ (line ends, indication) hold scenarios of any program:
# there expect.program names the patient's program and patient ids start with the folder's prefix; everywhere
# else the folder is the program.
MIXED_FOLDERS = {"triggers": ("trig-", {"hiv", "t2d", "ms"}), "lines": ("lines-", {"hiv", "t2d", "ms", "nsclc", "crc"})}


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _bundle_files() -> list[Path]:
    files = []
    for path in sorted(FIXTURES.rglob("*.json")):
        data = _load(path)
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            files.append(path)
    return files


BUNDLE_FILES = _bundle_files()


def _rel(path: Path) -> str:
    return path.relative_to(FIXTURES).as_posix()


def _references(node: Any) -> Iterator[str]:
    """Every Reference.reference string anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _patients(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in data.get("entry", []) if e["resource"]["resourceType"] == "Patient"]


def _local_ids(data: dict[str, Any]) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in data.get("entry", [])}


def _scenarios() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in SCENARIO_FILES:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        for i, entry in enumerate(entries):
            out.append((f"{path.stem}[{i}]:{entry.get('name', entry.get('file'))}", entry))
    return out


SCENARIOS = _scenarios()


def test_fixtures_present() -> None:
    assert BUNDLE_FILES, "no FHIR Bundles found under fixtures/"
    assert SCENARIOS, "no scenarios found under fixtures/scenarios/"


@pytest.mark.parametrize("path", BUNDLE_FILES, ids=_rel)
def test_bundle_is_valid_r4b(path: Path) -> None:
    data = _load(path)
    bundle = Bundle.model_validate(data)
    assert bundle.type == "transaction"
    assert bundle.entry, "empty bundle"


@pytest.mark.parametrize("path", BUNDLE_FILES, ids=_rel)
def test_bundle_is_loadable_transaction(path: Path) -> None:
    data = _load(path)
    full_urls: set[str] = set()
    local_ids: set[str] = set()
    for entry in data["entry"]:
        resource = entry["resource"]
        rid = resource.get("id")
        assert isinstance(rid, str), f"resource without id: {resource['resourceType']}"
        assert ID_RE.match(rid) and not rid.isdigit(), f"bad id {rid!r}"
        local = f"{resource['resourceType']}/{rid}"
        assert URN_UUID_RE.match(entry.get("fullUrl", "")), f"{local}: fullUrl must be urn:uuid:<uuid>"
        assert entry["request"] == {"method": "PUT", "url": local}, f"{local}: request must be PUT {local}"
        assert entry["fullUrl"] not in full_urls, f"duplicate fullUrl {entry['fullUrl']}"
        assert local not in local_ids, f"duplicate resource {local}"
        full_urls.add(entry["fullUrl"])
        local_ids.add(local)


@pytest.mark.parametrize("path", BUNDLE_FILES, ids=_rel)
def test_bundle_has_one_patient_and_local_references(path: Path) -> None:
    data = _load(path)
    patients = _patients(data)
    assert len(patients) == 1, f"expected exactly one Patient, found {len(patients)}"
    patient = patients[0]
    patient_ref = f"Patient/{patient['id']}"
    assert {"system": "urn:fhirsvc:fixture", "value": patient["id"]} in patient.get("identifier", [])

    local_ids = _local_ids(data)
    refs = list(_references(data))
    assert patient_ref in refs, "nothing in the bundle refers to its Patient"
    for ref in refs:
        assert RELATIVE_REF_RE.match(ref), f"reference {ref!r} is not a plain relative reference"
        if ref.startswith("Patient/"):
            assert ref == patient_ref, f"{ref} is not this bundle's patient {patient_ref}"
        assert ref in local_ids, f"reference {ref} does not resolve inside the bundle"


@pytest.mark.parametrize(("label", "entry"), SCENARIOS, ids=[label for label, _ in SCENARIOS])
def test_scenario_names_existing_file_and_patient(label: str, entry: dict[str, Any]) -> None:
    for key in ("file", "patient", "as_of", "description", "expect"):
        assert key in entry, f"{label}: missing {key}"
    path = FIXTURES / entry["file"]
    assert path.is_file(), f"{label}: {entry['file']} does not exist"
    data = _load(path)
    assert data.get("resourceType") == "Bundle"
    patients = _patients(data)
    assert [f"Patient/{p['id']}" for p in patients] == [entry["patient"]], f"{label}: patient mismatch"

    assert isinstance(entry["as_of"], dt.date), f"{label}: as_of must be a YAML date"
    expect = entry["expect"]
    assert expect["status"] in STATUSES, f"{label}: unknown status {expect['status']!r}"
    # null: no current line (every line has ended by the as-of date)
    assert expect["current_line"] is None or (isinstance(expect["current_line"], int) and expect["current_line"] >= 1)
    folder = Path(entry["file"]).parts[0]
    if folder in MIXED_FOLDERS:
        prefix, programs = MIXED_FOLDERS[folder]
        assert expect["program"] in programs, f"{label}: unknown program {expect['program']!r}"
        assert entry["patient"].startswith(f"Patient/{prefix}"), f"{label}: patient ids start with {prefix}"
    else:
        assert expect["program"] == folder
    local_ids = _local_ids(data)
    for ref in expect.get("evidence", []):
        # a draft order (order-select) is cited as "draft:" + its reference
        assert ref.removeprefix("draft:") in local_ids, f"{label}: evidence {ref} is not in {entry['file']}"


def test_scenario_names_unique() -> None:
    files = [entry["file"] for _, entry in SCENARIOS]
    patients = [entry["patient"] for _, entry in SCENARIOS]
    assert len(files) == len(set(files)), "two scenarios share a fixture file"
    assert len(patients) == len(set(patients)), "two scenarios share a patient"


@pytest.mark.parametrize("script", BUILD_SCRIPTS, ids=lambda p: p.name)
def test_build_script_regenerates_committed_fixtures(script: Path, tmp_path: Path) -> None:
    module_name = f"_fixture_builder_{script.stem}"
    spec = importlib.util.spec_from_file_location(module_name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the class is built
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # keep __pycache__ out of fixtures/ (it is bundled into the wheel)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "write_all"):
            pytest.skip(f"{script.name} has no write_all(root)")
        written = module.write_all(tmp_path)
    finally:
        sys.modules.pop(module_name, None)
        sys.dont_write_bytecode = dont_write_bytecode
    assert written
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = FIXTURES / rel
        assert committed.is_file(), f"{rel} is generated but not present under fixtures/"
        assert filecmp.cmp(path, committed, shallow=False), f"{rel} differs from {script.name}'s output"
