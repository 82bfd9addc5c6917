"""`fhirsvc sandbox`: load example patients into any FHIR server idempotently, and call a running fhirsvc."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from fhirsvc.record.files import iter_files
from fhirsvc.record.model import bundle_resources, normalise_reference

FIXTURE_SYSTEM = "urn:fhirsvc:fixture"
_NAMESPACE = uuid.UUID("0f7c2a4e-6d1b-4c8a-9e3f-2b5d7a1c9e44")
FHIR_JSON = "application/fhir+json"


@dataclass
class LoadReport:
    bundles: int = 0
    created: int = 0
    existing: int = 0
    patients: dict[str, str] = field(default_factory=dict)  # fixture Patient id → server Patient id


def _key(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource.get('id')}"


def _rewrite(node: Any, full_urls: dict[str, str]) -> Any:
    """Point references to resources of the same bundle at their urn:uuid fullUrls (the transaction resolves them)."""
    if isinstance(node, dict):
        out = {k: _rewrite(v, full_urls) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and normalise_reference(ref) in full_urls:
            out["reference"] = full_urls[normalise_reference(ref)]
        return out
    if isinstance(node, list):
        return [_rewrite(v, full_urls) for v in node]
    return node


def conditional_transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction that creates each resource only if no resource carries its fixture identifier yet.

    Every resource gets the identifier `urn:fhirsvc:fixture|<Type>/<id>`; loading twice creates nothing new
    (FHIR conditional create, `If-None-Exist`), on servers that assign their own ids as on those that don't.
    """
    full_urls = {_key(r): f"urn:uuid:{uuid.uuid5(_NAMESPACE, _key(r))}" for r in resources if r.get("id")}
    entries = []
    for resource in resources:
        if not resource.get("id"):
            continue
        key = _key(resource)
        body = _rewrite(copy.deepcopy(resource), full_urls)
        body.pop("id", None)
        body.pop("meta", None)
        identifiers = [i for i in body.get("identifier", []) if i.get("system") != FIXTURE_SYSTEM]
        body["identifier"] = [*identifiers, {"system": FIXTURE_SYSTEM, "value": key}]
        entries.append(
            {
                "fullUrl": full_urls[key],
                "resource": body,
                "request": {
                    "method": "POST",
                    "url": resource["resourceType"],
                    "ifNoneExist": f"identifier={FIXTURE_SYSTEM}|{key}",
                },
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def load(fhir_server: str, paths: Iterable[Path], token: str | None = None, timeout: float = 60.0) -> LoadReport:
    """POST one conditional transaction per bundle file; report what was created and the patients' server ids."""
    report = LoadReport()
    base = fhir_server.rstrip("/")
    with httpx.Client(timeout=timeout, headers=_headers(token)) as http:
        for path in iter_files(paths):
            if path.suffix != ".json":
                continue
            data = orjson.loads(path.read_bytes())
            if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
                continue
            resources = [r for _, r in bundle_resources(data)]
            transaction = conditional_transaction(resources)
            if not transaction["entry"]:
                continue
            response = http.post(base, content=orjson.dumps(transaction))
            response.raise_for_status()
            report.bundles += 1
            answer = orjson.loads(response.content)
            for sent, got in zip(transaction["entry"], answer.get("entry", []), strict=False):
                status = str(got.get("response", {}).get("status", ""))
                report.created += status.startswith("201")
                report.existing += status.startswith("200")
                location = str(got.get("response", {}).get("location", ""))
                if sent["request"]["url"] == "Patient" and location:
                    fixture_id = sent["resource"]["identifier"][-1]["value"].partition("/")[2]
                    report.patients[fixture_id] = location.split("/_history")[0].rpartition("Patient/")[2]
    return report


def call(
    service: str, fhir_server: str, patient: str, hook: str = "patient-view", token: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Discover the service for `hook` at a running fhirsvc and call it without prefetch (it fetches itself)."""
    base = service.rstrip("/")
    if not base.endswith("/cds-services"):
        base += "/cds-services"
    with httpx.Client(timeout=30.0) as http:
        discovery = http.get(base).raise_for_status().json()
        matches = [s for s in discovery.get("services", []) if s.get("hook") == hook]
        if not matches:
            raise ValueError(f"no service for hook {hook!r} at {base}")
        body: dict[str, Any] = {
            "hook": hook,
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": fhir_server.rstrip("/"),
            "context": {"userId": "Practitioner/example", "patientId": patient},
        }
        if hook in ("order-select", "order-sign"):
            body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
            if hook == "order-select":
                body["context"]["selections"] = []
        if token:
            body["fhirAuthorization"] = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "user/*.read",
                "subject": "fhirsvc-sandbox",
            }
        response = http.post(f"{base}/{matches[0]['id']}", json=body)
        answer: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {answer}")
        return str(matches[0]["id"]), answer


def format_cards(answer: dict[str, Any]) -> str:
    cards = answer.get("cards", [])
    if not cards:
        return "no cards"
    lines = []
    for card in cards:
        lines.append(f"[{card['indicator'].upper()}] {card['summary']}")
        lines.append(f"    source: {card['source']['label']}")
        for suggestion in card.get("suggestions", []):
            lines.append(f"    suggestion: {suggestion['label']}")
    return "\n".join(lines)
