"""The benchmark generator: deterministic, exact sizes, valid FHIR, and records whose rules actually fire."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from bench.generate import (
    AS_OF,
    PROGRAMS,
    patient_record,
    patient_resources,
    population,
    request_body,
    seeded,
    write_ndjson,
)
from fhirsvc.cds.models import CdsRequest
from fhirsvc.cds.services import PREFETCH
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.model import PatientRecord
from fhirsvc.terminology.knowledge import Knowledge


def _record(resources: list[dict[str, object]]) -> PatientRecord:
    record = PatientRecord(str(resources[0]["id"]))
    for resource in resources:
        record.add(resource)
    return record


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    assert request_body(patient_record(100, seed=7)) == request_body(patient_record(100, seed=7))
    assert request_body(patient_record(100, seed=7)) != request_body(patient_record(100, seed=8))
    write_ndjson(tmp_path / "a", population(30, seed=7))
    write_ndjson(tmp_path / "b", population(30, seed=7))
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {"Patient.ndjson", "Observation.ndjson", "MedicationRequest.ndjson"} <= set(files)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("size", [10, 100, 1_000])
def test_records_have_exactly_the_size_asked_for(size: int) -> None:
    resources = patient_record(size)
    assert len(resources) == size
    assert resources[0]["resourceType"] == "Patient"
    assert len({(r["resourceType"], r["id"]) for r in resources}) == size


def test_request_body_fills_every_prefetch_key_and_is_a_valid_hook_call() -> None:
    body = orjson.loads(request_body(patient_record(100)))
    request = CdsRequest.model_validate(body)
    assert request.patient_id == "bench-100" and request.hook == "patient-view"
    assert set(body["prefetch"]) == set(PREFETCH)
    assert body["prefetch"]["patient"]["resourceType"] == "Patient"
    entries = sum(len(v.get("entry", [])) for k, v in body["prefetch"].items() if k != "patient")
    assert entries == 99


def test_generated_resources_are_valid_fhir_r4b() -> None:
    resources = patient_record(100) + [r for patient in population(10) for r in patient]
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_every_program_has_a_finding_at_1000_resources(knowledge: Knowledge) -> None:
    result = evaluate_record(_record(patient_record(1_000)), knowledge, AS_OF)
    found = {p.program.id: [a.status for a in p.findings if a.status != "no-action"] for p in result.programs}
    assert set(found) == set(PROGRAMS)
    assert all(found[program] for program in PROGRAMS), found


def test_not_failing_records_stay_quiet_on_the_main_rules(knowledge: Knowledge) -> None:
    resources = patient_resources("quiet", 300, seeded("quiet"), failing=False)
    result = evaluate_record(_record(resources), knowledge, AS_OF)
    main_rules = {
        "hiv-virologic-failure",
        "t2d-a1c-above-target",
        "nsclc-progression",
        "crc-progression",
        "ms-breakthrough",
    }
    statuses = {a.rule: a.status for p in result.programs for a in p.findings if a.rule in main_rules}
    assert set(statuses) == main_rules
    assert set(statuses.values()) == {"no-action"}


def test_population_mixes_programs_and_outcomes(knowledge: Knowledge) -> None:
    programs: set[str] = set()
    statuses: set[str] = set()
    for resources in population(40):
        assert 20 <= len(resources) <= 60
        result = evaluate_record(_record(resources), knowledge, AS_OF)
        programs |= {p.program.id for p in result.programs}
        statuses |= {a.status for a in result.findings}
    assert programs == set(PROGRAMS)
    assert {"no-action", "second-line-evaluation"} <= statuses
