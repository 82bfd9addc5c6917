"""Schemathesis over the app's own OpenAPI schema: every operation, valid and invalid input, no 5xx, and every
response (status, content type, body, headers) as the schema says.

Twice: with CDS client authentication on (discovery included; every generated call carries a valid client JWT, and
the `ignored_auth` check proves calls without one are refused) and with it off. The number of generated cases is
bounded so both runs stay well under a minute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.python.asgi import shutdown_lifespans
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.cds_helpers import CLIENT, FakeFhirServer, hook_request, prefetch_from, resources_of
from tests.conftest import MakeClient, load_fixture

SIGN_ME = "Bearer sign-me"  # replaced by a real client JWT for the exact URL the app sees
MAX_EXAMPLES = int(os.environ.get("FHIRSVC_FUZZ_EXAMPLES", "25"))  # per operation and data kind; more: a deep run

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]


class SignRequests:
    """ASGI middleware of the test: `Authorization: Bearer sign-me` becomes a fresh JWT whose `aud` is what the
    app will compute (FHIRSVC_PUBLIC_URL + the path as Starlette parses it), so odd generated paths still match.
    Requests without the placeholder pass untouched: schemathesis' auth probes stay unauthenticated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"]]
            if (b"authorization", SIGN_ME.encode()) in headers:
                token = CLIENT.token(Request(scope).url.path)
                headers = [(k, v) for k, v in headers if k != b"authorization"]
                headers.append((b"authorization", f"Bearer {token}".encode()))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def _key_file(folder: Path) -> Path:
    path = folder / "smart.pem"
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def build_app(mode: str, folder: Path, make_client: MakeClient) -> ASGIApp:
    fhir = FakeFhirServer(resources_of(load_fixture("hiv/fail-basic.json")))
    options: dict[str, Any] = {
        "store_url": f"sqlite:///{folder / 'fuzz.db'}",
        "smart_client_id": "fhirsvc",
        "smart_private_key_file": _key_file(folder),
        "cds_time_budget": 1.0,
    }
    if mode == "auth":
        client = make_client(fhir.transport, signer=None, cds_auth_discovery=True, **options)
    else:
        client = make_client(fhir.transport, signer=None, cds_auth="off", cds_clients=[], **options)
    return client.app  # schemathesis calls the app itself (SignRequests signs what needs a JWT)


EXPECTED_OPERATIONS = {
    "GET /livez",
    "GET /readyz",
    "GET /metrics",
    "GET /cds-services",
    "POST /cds-services/{service_id}",
    "POST /cds-services/{service_id}/feedback",
    "GET /patients/{patient_id}/therapy",
    "GET /.well-known/jwks.json",
}


def load_schema(app: ASGIApp) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def can_be_invalid(operation: Any) -> bool:
    """Negative data needs a constrained input: a body, a query, a header (the CDS client JWT). A lone string path
    parameter has no invalid value."""
    return bool(operation.query or operation.headers or operation.body)


# schemathesis.pytest.from_fixture() needs pytest's private Item._nodeid, gone in pytest 9.2: the operations and
# their strategies are driven here with hypothesis directly instead (positive and negative data for each).
@pytest.mark.parametrize("mode", ["auth", "open"])
def test_every_operation_answers_as_documented(mode: str, tmp_path: Path, make_client: MakeClient) -> None:
    schema = load_schema(SignRequests(build_app(mode, tmp_path, make_client)))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} == EXPECTED_OPERATIONS
    headers = {"Authorization": SIGN_ME} if mode == "auth" else {}
    # With authentication on, a 2xx to a secured operation is sent again without the JWT and must be refused.
    extra = [checks.ignored_auth] if mode == "auth" else []
    try:
        for operation in operations:
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if can_be_invalid(operation) else [])
            for generation_mode in modes:

                @settings(
                    max_examples=MAX_EXAMPLES,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=generation_mode))
                def call(case: Any) -> None:
                    case.call_and_validate(headers=headers, checks=CHECKS + extra)

                note = f"{operation.method.upper()} {operation.path}, {generation_mode.value} data, auth {mode}"
                try:
                    call()
                except Exception as exc:
                    exc.add_note(note)
                    raise
    finally:
        shutdown_lifespans()  # the store and HTTP pools of this app


@pytest.mark.parametrize("fixture", ["hiv/fail-basic.json", "t2d/a1c-above.json", "hiv/suppressed.json"])
def test_real_cards_conform_to_the_schema(fixture: str, tmp_path: Path, make_client: MakeClient) -> None:
    """Generated requests rarely get past validation to a card; real patients' cards must match the schema too."""
    app = SignRequests(build_app("auth", tmp_path, make_client))
    loaded = load_schema(app)
    operation = loaded["/cds-services/{service_id}"]["POST"]
    bundle = load_fixture(fixture)
    patient = next(r for r in resources_of(bundle) if r["resourceType"] == "Patient")["id"]
    try:
        for service in ("second-line-patient-view", "second-line-order-sign"):
            hook = "patient-view" if service.endswith("patient-view") else "order-sign"
            body = hook_request(patient, prefetch_from(bundle), hook=hook)
            if hook == "order-sign":
                body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
            case = operation.Case(path_parameters={"service_id": service}, body=body, media_type="application/json")
            response = case.call_and_validate(headers={"Authorization": SIGN_ME}, checks=CHECKS)
            assert response.status_code == 200
            cards = response.json()["cards"]
            assert bool(cards) == (fixture != "hiv/suppressed.json"), cards
    finally:
        shutdown_lifespans()
