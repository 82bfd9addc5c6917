"""The README's worked CDS Hooks call and its prefetch table, checked against the service itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from fhirsvc.api.app import create_app
from fhirsvc.cds.services import REQUIRED
from fhirsvc.cli import demo_settings
from fhirsvc.config import Settings
from fhirsvc.terminology.knowledge import Knowledge
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
ELIDED = "…"  # the README shortens the response; an elided value is not compared


def section(title: str) -> str:
    """The README text under a `## ` or `### ` heading, up to the next heading."""
    found = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, flags=re.DOTALL | re.MULTILINE)
    assert found, f"README has no section {title!r}"
    return found.group(1)


def code_block(text: str, language: str) -> str:
    found = re.search(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert found, f"no {language} block"
    return found.group(1)


def pairs(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of a JSON document whose value is a string, number or boolean, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from pairs(value)
            else:
                yield key, value
    elif isinstance(node, list):
        for item in node:
            yield from pairs(item)


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the worked example must need no FHIR server, but {request.url} was read")


@pytest.fixture
def demo_service(knowledge: Knowledge) -> Iterator[TestClient]:
    """The service as `fhirsvc demo --serve` runs it (the README starts it that way)."""
    app = create_app(demo_settings(Settings()), knowledge=knowledge, fhir_transport=httpx.MockTransport(_no_network))
    with TestClient(app) as client:
        yield client


def test_the_curl_line_gets_the_card_the_readme_shows(demo_service: TestClient) -> None:
    example = section("Try a CDS Hooks call")
    shell = code_block(example, "sh")
    url = re.search(r"curl -s http://127\.0\.0\.1:8000(/cds-services/[\w-]+)", shell)
    body = re.search(r"--data-binary @(\S+)", shell)
    assert url and body, shell
    answer = demo_service.post(
        url.group(1), content=(ROOT / body.group(1)).read_bytes(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    response = answer.json()
    shown = orjson.loads(code_block(example, "json"))
    assert response["cards"][0]["summary"] == shown["cards"][0]["summary"]
    got = set(pairs(response))
    compared = [(key, value) for key, value in pairs(shown) if ELIDED not in str(value) and key != ELIDED]
    assert len(compared) >= 10, "the README's answer should show real values, not only elisions"
    assert [pair for pair in compared if pair not in got] == []


def test_the_worked_request_fills_every_prefetch_key_of_discovery(demo_service: TestClient) -> None:
    discovery = demo_service.get("/cds-services").json()
    path = re.search(r"@(fixtures/cds/\S+\.json)", section("Try a CDS Hooks call"))
    assert path
    request = orjson.loads((ROOT / path.group(1)).read_bytes())
    service = next(s for s in discovery["services"] if s["hook"] == request["hook"])
    assert set(request["prefetch"]) == set(service["prefetch"])
    assert "fhirServer" not in request  # every key is filled: nothing to fetch
    for key, template in service["prefetch"].items():
        value = request["prefetch"][key]
        expected_type = re.match(r"[A-Za-z]+", template)
        assert expected_type
        if "?" in template:  # a search: a searchset Bundle of that type, as the EHR's server answered it
            assert value["type"] == "searchset" and value["total"] == len(value["entry"])
            assert {e["resource"]["resourceType"] for e in value["entry"]} <= {expected_type.group(0)}
        else:
            assert value["resourceType"] == expected_type.group(0)


def test_the_readme_prefetch_table_is_the_discovery_document(demo_service: TestClient) -> None:
    services = demo_service.get("/cds-services").json()["services"]
    prefetch = services[0]["prefetch"]
    assert all(s["prefetch"] == prefetch for s in services)  # the README says they are the same
    table = "\n".join(
        [
            "| prefetch key | template | when it cannot be obtained |",
            "|---|---|---|",
            *(
                f"| `{key}` | `{template}` | {'required (412)' if key in REQUIRED else 'optional'} |"
                for key, template in prefetch.items()
            ),
        ]
    )
    cds_hooks = section("CDS Hooks")
    assert table in cds_hooks, f"the README's prefetch table should read:\n{table}"
    for service in services:
        assert f"`{service['id']}`" in cds_hooks
