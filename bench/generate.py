"""Deterministic (seeded) synthetic patients with real codes, as CDS Hooks request bodies and Bulk Data NDJSON.

A record is a multi-year history: the program's diagnosis, its lines of therapy (MedicationStatement and
MedicationRequest), the results its rules read (viral load, HbA1c, eGFR, disease status, EDSS, relapses), and
everyday filler (routine labs, vital signs, other drugs and problems). `failing=True` makes every program's
main rule fire (virologic failure, HbA1c above target, progression, breakthrough disease).

    python -m bench.generate --size 1000 --out body.json          # one CDS Hooks request body
    python -m bench.generate --population 1000 --out export/      # Bulk Data NDJSON, one file per type
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.codes import Code, Codes, default_codes
from fhirsvc.cds.services import PREFETCH

AS_OF = date(2026, 6, 1)  # FHIRSVC_TODAY / --as-of for every benchmark
SEED = 20260601
SIZES = (10, 100, 1_000, 10_000)
PROGRAMS = ("hiv", "t2d", "nsclc", "crc", "ms")
FHIR_BASE = "https://ehr.example.test/fhir"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_NAMESPACE = uuid.UUID("0f6f7c1e-3b0e-4a52-9d0c-2b1f4f1f7a10")

Resource = dict[str, Any]
Filler = Callable[["Chart"], None]

# Everyday filler: codes outside every program (no mapping reads them), so they cost work but change no finding.
_LABS = (  # LOINC, display, UCUM unit, low, high, decimals
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 0),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11.5, 16.5, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 10.5, 1),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 75, 140, 0),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 10, 45, 0),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 240, 0),
)
_VITALS = (
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 105, 150, 0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 95, 0),
    ("29463-7", "Body weight", "kg", 55, 110, 1),
    ("8867-4", "Heart rate", "/min", 55, 100, 0),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 19, 35, 1),
)
_OTHER_DRUGS = (  # RxNorm ingredients not in the drug catalog, the pregnancy table or the interaction table
    Code("http://www.nlm.nih.gov/research/umls/rxnorm", "29046", "lisinopril"),
    Code("http://www.nlm.nih.gov/research/umls/rxnorm", "83367", "atorvastatin"),
    Code("http://www.nlm.nih.gov/research/umls/rxnorm", "17767", "amlodipine"),
    Code("http://www.nlm.nih.gov/research/umls/rxnorm", "7646", "omeprazole"),
    Code("http://www.nlm.nih.gov/research/umls/rxnorm", "10582", "levothyroxine"),
    Code("http://www.nlm.nih.gov/research/umls/rxnorm", "26225", "ondansetron"),
)
_OTHER_PROBLEMS = (
    Code(SNOMED, "59621000", "Essential hypertension"),
    Code(SNOMED, "55822004", "Hyperlipidemia"),
    Code(SNOMED, "235595009", "Gastroesophageal reflux disease"),
    Code(SNOMED, "40930008", "Hypothyroidism"),
    Code(SNOMED, "195967001", "Asthma"),
)
_STABLE = Code(SNOMED, "359746009", "Patient's condition stable")  # mCODE ConditionStatusTrendVS
_CD4 = ("24467-3", "CD3+CD4+ (T4 helper) cells [#/volume] in Blood", "/uL", 350, 950, 0)
_FAMILY = ("Okafor", "Rossi", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Silva", "Tanaka", "Moreau", "Ivanova")
_GIVEN = ("Amara", "Luca", "Mai", "Jonas", "Layla", "Piotr", "Ana", "Kenji", "Claire", "Olga")


@dataclass
class Chart:
    """One patient's resources under construction, with deterministic ids and a seeded random source."""

    patient_id: str
    rng: random.Random
    as_of: date = AS_OF
    resources: list[Resource] = field(default_factory=list)
    start: date = AS_OF  # earliest date of the history (filler is spread from here to as_of)
    fillers: dict[str, list[Filler]] = field(default_factory=dict)  # per resource type; changes no finding
    _ids: Counter[str] = field(default_factory=Counter)

    def _id(self, kind: str) -> str:
        self._ids[kind] += 1
        return f"{self.patient_id}-{kind}-{self._ids[kind]}"

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def day(self, low: date, high: date) -> date:
        """A random day in [low, high] (low when the range is empty)."""
        return low + timedelta(days=self.rng.randint(0, max(0, (high - low).days)))

    def _stamp(self, when: date) -> str:
        return f"{when.isoformat()}T{self.rng.randint(7, 17):02d}:{self.rng.choice((0, 15, 30, 45)):02d}:00Z"

    def patient(self) -> None:
        born = date(1940 + self.rng.randint(0, 60), self.rng.randint(1, 12), self.rng.randint(1, 28))
        self.resources.append(
            {
                "resourceType": "Patient",
                "id": self.patient_id,
                "identifier": [{"system": "urn:fhirsvc:bench", "value": self.patient_id}],
                "name": [{"use": "official", "family": self.rng.choice(_FAMILY), "given": [self.rng.choice(_GIVEN)]}],
                "gender": self.rng.choice(("female", "male")),
                "birthDate": born.isoformat(),
            }
        )

    def condition(self, code: Code, onset: date, clinical: str = "active", category: str = "problem-list-item") -> None:
        self.resources.append(
            {
                "resourceType": "Condition",
                "id": self._id("cond"),
                "clinicalStatus": {"coding": [{"system": _CLINICAL, "code": clinical}]},
                "verificationStatus": {"coding": [{"system": _VERIFICATION, "code": "confirmed"}]},
                "category": [{"coding": [{"system": _COND_CATEGORY, "code": category}]}],
                "code": code.concept(),
                "subject": self.subject,
                "onsetDateTime": onset.isoformat(),
                "recordedDate": onset.isoformat(),
            }
        )

    def _observation(self, code: Code, when: date, category: str) -> Resource:
        return {
            "resourceType": "Observation",
            "id": self._id("obs"),
            "status": "final",
            "category": [{"coding": [{"system": _OBS_CATEGORY, "code": category}]}],
            "code": code.concept(),
            "subject": self.subject,
            "effectiveDateTime": self._stamp(when),
        }

    def quantity(
        self,
        code: Code,
        when: date,
        value: float,
        unit: str,
        category: str = "laboratory",
        comparator: str | None = None,
    ) -> None:
        resource = self._observation(code, when, category)
        quantity: dict[str, Any] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        if comparator:
            quantity["comparator"] = comparator
        resource["valueQuantity"] = quantity
        self.resources.append(resource)

    def coded(self, code: Code, when: date, value: Code, category: str = "imaging") -> None:
        resource = self._observation(code, when, category)
        resource["valueCodeableConcept"] = value.concept()
        self.resources.append(resource)

    def statement(self, drug: Code, start: date, end: date | None) -> None:
        period = {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})}
        self.resources.append(
            {
                "resourceType": "MedicationStatement",
                "id": self._id("ms"),
                "status": "completed" if end else "active",
                "medicationCodeableConcept": drug.concept(),
                "subject": self.subject,
                "effectivePeriod": period,
                "dateAsserted": start.isoformat(),
            }
        )

    def request(self, drug: Code, authored: date, supply_days: int | None = 30, status: str = "completed") -> None:
        resource: Resource = {
            "resourceType": "MedicationRequest",
            "id": self._id("mr"),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": drug.concept(),
            "subject": self.subject,
            "authoredOn": authored.isoformat(),
        }
        if supply_days:
            resource["dispenseRequest"] = {
                "numberOfRepeatsAllowed": 0,
                "expectedSupplyDuration": {"value": supply_days, "unit": "days", "system": UCUM, "code": "d"},
            }
        self.resources.append(resource)

    def lab(self, spec: tuple[str, str, str, float, float, int], when: date, category: str = "laboratory") -> None:
        loinc, display, unit, low, high, decimals = spec
        value = round(self.rng.uniform(low, high), decimals)
        self.quantity(Code(LOINC, loinc, display), when, int(value) if decimals == 0 else value, unit, category)

    def filler(self, rtype: str, *fillers: Filler) -> None:
        self.fillers.setdefault(rtype, []).extend(fillers)

    def refills(self, drugs: list[Code], start: date, end: date, supply: int = 30) -> None:
        """Filler: a refill of one of the line's drugs, inside the line (its supply ends before the line does)."""

        def add(chart: Chart) -> None:
            chart.request(chart.rng.choice(drugs), chart.day(start, end - timedelta(days=supply)), supply)

        self.filler("MedicationRequest", add)


def _history_days(budget: int) -> int:
    """Longer histories for bigger records: about 400 days at 20 resources, 11 years at 2,000."""
    return max(400, min(4000, budget * 2))


def _hiv(chart: Chart, codes: Codes, budget: int, failing: bool) -> None:
    a = chart.as_of
    start = a - timedelta(days=_history_days(budget))
    chart.start = min(chart.start, start)
    chart.condition(codes.diagnosis("hiv", "86406008"), start - timedelta(days=chart.rng.randint(7, 60)))
    nrti = [codes.drug("emtricitabine"), codes.drug("tenofovir")]
    line1 = [codes.drug("efavirenz"), *nrti]
    l1 = start + timedelta(days=14)
    current = l1
    if budget >= 16:  # two lines: NNRTI-based, then an INSTI-based regimen (a class change)
        current = a - timedelta(days=max(300, int((a - start).days * 0.45)))
        line2 = [codes.drug("dolutegravir"), *nrti]
        for drug in line1:
            chart.statement(drug, l1, current)
        for drug in line2:
            chart.statement(drug, current, None)
        chart.refills(line1, l1, current)
        chart.refills(line2, current, a)
        if budget >= 24 and chart.rng.random() < 0.3:  # rifampin just started: an interaction card
            chart.request(codes.drug("rifampin"), a - timedelta(days=10), 120, status="active")
    else:
        for drug in line1:
            chart.statement(drug, l1, None)
        chart.refills(line1, l1, a)
    viral_load = codes.observation("hiv", "viral_load", "20447-9")
    if failing:  # two results ≥ 200 copies/mL, ≥ 24 weeks into the current line
        chart.quantity(viral_load, a - timedelta(days=110), chart.rng.randint(800, 5000), "copies/mL")
        chart.quantity(viral_load, a - timedelta(days=25), chart.rng.randint(1000, 20000), "copies/mL")
    else:
        chart.quantity(viral_load, a - timedelta(days=25), 20, "copies/mL", comparator="<")

    def suppressed(chart: Chart) -> None:
        when = chart.day(l1 + timedelta(days=120), a - timedelta(days=120))
        chart.quantity(viral_load, when, 20, "copies/mL", comparator="<")

    def cd4(chart: Chart) -> None:
        chart.lab(_CD4, chart.day(start, a - timedelta(days=1)))

    chart.filler("Observation", suppressed, cd4)


def _t2d(chart: Chart, codes: Codes, budget: int, failing: bool) -> None:
    a = chart.as_of
    start = a - timedelta(days=_history_days(budget))
    chart.start = min(chart.start, start)
    chart.condition(codes.diagnosis("t2d", "E11.9"), start)
    metformin = codes.drug("metformin")
    chart.statement(metformin, start + timedelta(days=14), None)
    hba1c = codes.observation("t2d", "hba1c", "4548-4")
    egfr = codes.observation("t2d", "egfr", "62238-1")
    uacr = codes.observation("t2d", "uacr", "9318-7")
    chart.quantity(hba1c, a - timedelta(days=30), round(chart.rng.uniform(7.6, 9.4) if failing else 6.6, 1), "%")
    chart.quantity(egfr, a - timedelta(days=60), chart.rng.randint(65, 95), "mL/min/{1.73_m2}")
    if failing and chart.rng.random() < 0.4:
        chart.condition(codes.condition("t2d", "heart_failure", "84114007"), chart.day(start, a - timedelta(days=90)))
    low, high = (6.8, 8.6) if failing else (6.1, 6.9)

    def a1c(chart: Chart) -> None:
        when = chart.day(start + timedelta(days=90), a - timedelta(days=45))
        chart.quantity(hba1c, when, round(chart.rng.uniform(low, high), 1), "%")

    def kidney(chart: Chart) -> None:
        when = chart.day(start, a - timedelta(days=70))
        if chart.rng.random() < 0.5:
            chart.quantity(egfr, when, chart.rng.randint(65, 95), "mL/min/{1.73_m2}")
        else:
            chart.quantity(uacr, when, chart.rng.randint(5, 25), "mg/g")

    chart.filler("Observation", a1c, kidney)
    chart.refills([metformin], start + timedelta(days=14), a)


def _cancer(
    chart: Chart, codes: Codes, budget: int, failing: bool, program: str, diagnosis: str, induction: list[Code]
) -> None:
    """Cycles of a first-line regimen (induction, then maintenance for nsclc), scans, and the latest disease status."""
    a = chart.as_of
    every, maintenance = (21, induction[1:]) if program == "nsclc" else (14, induction)

    def size(cycles: int) -> int:  # condition + requests + scans + latest status
        return 1 + len(induction) * min(cycles, 4) + len(maintenance) * max(0, cycles - 4) + cycles // 3 + 1

    cycles = 35 if program == "nsclc" else 40
    while cycles > 2 and size(cycles) > 0.6 * budget:
        cycles -= 1
    l1 = a - timedelta(days=every * cycles + 7)
    chart.start = min(chart.start, a - timedelta(days=_history_days(budget)), l1 - timedelta(days=60))
    chart.condition(codes.diagnosis(program, diagnosis), l1 - timedelta(days=30))
    for cycle in range(cycles):
        for drug in induction if cycle < 4 else maintenance:
            chart.request(drug, l1 + timedelta(days=every * cycle), None)
    status = codes.observation(program, "disease_status", "97509-4")
    for scan in range(1, cycles // 3 + 1):
        when = l1 + timedelta(days=every * 3 * scan)
        if when < a - timedelta(days=30):
            chart.coded(status, when, _STABLE)
    chart.coded(
        status, a - timedelta(days=14), codes.value(program, "disease_status", "progression") if failing else _STABLE
    )

    def blood_count(chart: Chart) -> None:
        chart.lab(chart.rng.choice(_LABS[3:6]), chart.day(l1, a - timedelta(days=1)))

    chart.filler("Observation", blood_count)


def _nsclc(chart: Chart, codes: Codes, budget: int, failing: bool) -> None:
    drugs = [codes.drug("carboplatin"), codes.drug("pemetrexed"), codes.drug("pembrolizumab")]
    _cancer(chart, codes, budget, failing, "nsclc", "254637007", drugs)


def _crc(chart: Chart, codes: Codes, budget: int, failing: bool) -> None:
    drugs = [codes.drug("oxaliplatin"), codes.drug("fluorouracil"), codes.drug("leucovorin")]
    _cancer(chart, codes, budget, failing, "crc", "363406005", drugs)


def _ms(chart: Chart, codes: Codes, budget: int, failing: bool) -> None:
    a = chart.as_of
    start = a - timedelta(days=_history_days(budget))
    chart.start = min(chart.start, start)
    diagnosis = codes.diagnosis("ms", "426373005")
    chart.condition(diagnosis, start)
    interferon = codes.drug("interferon beta-1a")
    chart.statement(interferon, start + timedelta(days=30), None)
    lesions = codes.observation("ms", "new_lesions")
    edss = codes.observation("ms", "edss")
    if failing:  # a relapse and two new lesions within the year on a platform therapy
        chart.condition(
            codes.condition("ms", "ms", "426373005"), a - timedelta(days=75), "relapse", "encounter-diagnosis"
        )
    chart.quantity(lesions, a - timedelta(days=60), 2 if failing else 0, "1", "imaging")
    chart.quantity(edss, a - timedelta(days=60), 2.0, "1", "exam")

    def follow_up(chart: Chart) -> None:
        when = chart.day(start + timedelta(days=30), a - timedelta(days=90))
        if chart.rng.random() < 0.5:
            chart.quantity(edss, when, 2.0, "1", "exam")
        else:
            chart.quantity(lesions, min(when, a - timedelta(days=400)), 0, "1", "imaging")

    chart.filler("Observation", follow_up)
    chart.refills([interferon], start + timedelta(days=30), a, 28)


_STORIES: dict[str, Callable[[Chart, Codes, int, bool], None]] = {
    "hiv": _hiv,
    "t2d": _t2d,
    "nsclc": _nsclc,
    "crc": _crc,
    "ms": _ms,
}
MINIMUM = {"hiv": 6, "t2d": 4, "nsclc": 9, "crc": 9, "ms": 4}  # resources each story needs for its finding


# The resource mix every record converges to (EHR charts are mostly results), so that sizes compare like for like.
MIX = {"Observation": 0.65, "MedicationRequest": 0.27, "MedicationStatement": 0.04, "Condition": 0.04}


def _generic(chart: Chart, rtype: str) -> None:
    """One everyday resource of a type: a lab or vital sign, another drug, another problem."""
    rng = chart.rng
    when = chart.day(chart.start, chart.as_of - timedelta(days=1))
    if rtype == "Observation":
        if rng.random() < 0.7:
            chart.lab(rng.choice(_LABS), when)
        else:
            chart.lab(rng.choice(_VITALS), when, "vital-signs")
    elif rtype == "MedicationRequest":
        chart.request(rng.choice(_OTHER_DRUGS), when, 90)
    elif rtype == "MedicationStatement":
        end = when + timedelta(days=rng.randint(30, 720))
        chart.statement(rng.choice(_OTHER_DRUGS), when, end if end < chart.as_of else None)
    else:
        chart.condition(rng.choice(_OTHER_PROBLEMS), when, category="encounter-diagnosis")


def _fill(chart: Chart, size: int) -> None:
    """Add filler up to `size`, each time of the type furthest below its share of MIX."""
    counts = Counter(r["resourceType"] for r in chart.resources)
    while len(chart.resources) < size:
        total = len(chart.resources) + 1
        rtype = max(MIX, key=lambda t: MIX[t] * total - counts[t])
        own = chart.fillers.get(rtype)
        if own and chart.rng.random() < 0.3:
            chart.rng.choice(own)(chart)
        else:
            _generic(chart, rtype)
        counts[rtype] += 1


def patient_resources(
    patient_id: str,
    size: int,
    rng: random.Random,
    programs: Iterable[str] = PROGRAMS,
    failing: bool = True,
    codes: Codes | None = None,
) -> list[Resource]:
    """Exactly `size` resources (Patient first): as many of `programs` as fit, each with its story, then filler."""
    codes = codes or default_codes()
    chart = Chart(patient_id, rng)
    chart.patient()
    wanted = list(programs)
    budget = size - 1
    while wanted and any(budget // len(wanted) < MINIMUM[p] for p in wanted):
        wanted.pop()
    for program in wanted:
        _STORIES[program](chart, codes, budget // len(wanted), failing)
    if len(chart.resources) > size:
        raise ValueError(f"{size} resources are too few for {wanted}")
    _fill(chart, size)
    body = chart.resources[1:]
    rng.shuffle(body)  # servers return search results in no particular order
    return [chart.resources[0], *body]


def seeded(key: str) -> random.Random:
    """A random source seeded by a string (stable across runs and PYTHONHASHSEED): synthetic data, not secrets."""
    return random.Random(key)  # noqa: S311


def patient_record(size: int, seed: int = SEED, failing: bool = True) -> list[Resource]:
    """The benchmark record of `size` resources: one patient in every program that fits (all five from 100 on)."""
    return patient_resources(f"bench-{size}", size, seeded(f"{seed}:record:{size}"), failing=failing)


def population(count: int, seed: int = SEED, first: int = 0) -> Iterator[list[Resource]]:
    """`count` patients of 20-60 resources: one main program each, a quarter with t2d as well, half failing."""
    for index in range(first, first + count):
        rng = seeded(f"{seed}:population:{index}")
        program = rng.choice(PROGRAMS)
        programs = [program, "t2d"] if program != "t2d" and rng.random() < 0.25 else [program]
        failing = rng.random() < 0.5
        yield patient_resources(f"pop-{index:06d}", rng.randint(20, 60), rng, programs, failing)


def prefetch_type(template: str) -> str:
    """`Condition?patient={{...}}` → Condition; `Patient/{{...}}` → Patient."""
    return template.split("?", 1)[0].split("/", 1)[0]


def searchset(resources: list[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [
            {"relation": "self", "url": f"{FHIR_BASE}/{resources[0]['resourceType']}" if resources else FHIR_BASE}
        ],
        "entry": [
            {"fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


def request_body(resources: list[Resource], hook: str = "patient-view") -> bytes:
    """A CDS Hooks call with every prefetch key of fhirsvc.cds.services.PREFETCH filled (no fhirServer needed)."""
    patient = resources[0]
    by_type: dict[str, list[Resource]] = {}
    for resource in resources[1:]:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch: dict[str, Any] = {}
    for key, template in PREFETCH.items():
        rtype = prefetch_type(template)
        prefetch[key] = patient if rtype == "Patient" else searchset(by_type.get(rtype, []))
    body = {
        "hook": hook,
        "hookInstance": str(uuid.uuid5(_NAMESPACE, f"{hook}:{patient['id']}")),
        "context": {"userId": "Practitioner/bench", "patientId": patient["id"]},
        "prefetch": prefetch,
    }
    return orjson.dumps(body)


def write_ndjson(directory: Path, patients: Iterable[list[Resource]]) -> Counter[str]:
    """Bulk Data layout: one `<Type>.ndjson` per resource type, written patient by patient (flat memory)."""
    directory.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    handles: dict[str, Any] = {}
    try:
        for resources in patients:
            for resource in resources:
                rtype = resource["resourceType"]
                if rtype not in handles:
                    handles[rtype] = (directory / f"{rtype}.ndjson").open("wb")
                handles[rtype].write(orjson.dumps(resource) + b"\n")
                counts[rtype] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--size", type=int, help="one patient with this many resources, as a CDS Hooks request body")
    what.add_argument("--population", type=int, help="this many patients, as Bulk Data NDJSON")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, required=True, help="a file (--size) or a directory (--population)")
    args = parser.parse_args(argv)
    if args.size:
        args.out.write_bytes(request_body(patient_record(args.size, args.seed)))
    else:
        counts = write_ndjson(args.out, population(args.population, args.seed))
        print(", ".join(f"{n} {t}" for t, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
