"""The load benchmark's floor server: it parses every body as the service must, and answers without evaluating."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from bench.floor_app import ANSWER, app
from bench.generate import patient_record, request_body


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://floor") as floor:
        yield floor


@pytest.mark.anyio
async def test_a_hook_call_is_parsed_and_answered_with_no_cards(client: httpx.AsyncClient) -> None:
    body = request_body(patient_record(100))
    response = await client.post("/cds-services/second-line-patient-view", content=body)
    assert (response.status_code, response.content) == (200, ANSWER)


@pytest.mark.anyio
async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient) -> None:
    """Proof that the body is parsed, not skipped: a floor that skipped parsing would flatter the service."""
    response = await client.post("/cds-services/second-line-patient-view", content=b'{"hook": ')
    assert response.status_code == 400
