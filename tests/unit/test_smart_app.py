"""The SMART app's parts: PKCE, state, the signed cookie, sessions, and the launch, callback and page in-process."""

from __future__ import annotations

import base64
import hashlib
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from fhirsvc.api.smart_app import AppState, finding_from_app_context
from fhirsvc.api.smart_session import (
    PENDING_SECONDS,
    AppSession,
    CookieSigner,
    PendingLaunch,
    SessionStore,
    new_pkce_verifier,
    new_state,
    pkce_challenge,
)
from fhirsvc.config import Settings
from fhirsvc.pipeline import evaluate_record
from fhirsvc.record.files import index_records
from fhirsvc.render.cards import SECOND_LINE_STATUSES, cards_with_findings
from fhirsvc.terminology.knowledge import Knowledge
from tests.cds_helpers import FHIR_BASE, hook_request, prefetch_from, resources_of, searchset
from tests.conftest import AS_OF, FIXTURES, MakeClient, load_fixture

CLIENT_ID = "timeline-app"
AUTHORIZE = "https://auth.example.test/authorize"
TOKEN_URL = "https://auth.example.test/token"
ACCESS_TOKEN = "secret-access-token-value"
FINDING = "0f3c2a8e-1b7d-5e44-9a61-2c3d4e5f6a7b"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# PKCE and state ---------------------------------------------------------------------------------------------------


def test_the_challenge_is_the_unpadded_base64url_sha256_of_the_verifier() -> None:
    verifier = "a" * 43
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert pkce_challenge(verifier) == expected and "=" not in expected and len(expected) == 43


def test_verifiers_and_states_are_random_and_of_the_allowed_alphabet() -> None:
    verifiers = {new_pkce_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    unreserved = set(string.ascii_letters + string.digits + "-._~")
    assert all(43 <= len(v) <= 128 and set(v) <= unreserved for v in verifiers)
    states = {new_state() for _ in range(50)}
    assert len(states) == 50 and all(len(s) >= 40 for s in states)


# The session cookie -------------------------------------------------------------------------------------------------


def test_a_signed_cookie_names_its_session_until_it_expires() -> None:
    clock = Clock()
    signer = CookieSigner(b"k" * 32, 900, clock)
    value = signer.sign("session-1")
    assert signer.verify(value) == "session-1"
    clock.now += 899
    assert signer.verify(value) == "session-1"
    clock.now += 1
    assert signer.verify(value) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda v: "session-2" + v[len("session-1") :],  # another session id
        lambda v: v.replace(v.split(".")[1], str(int(v.split(".")[1]) + 3600)),  # a longer life
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),  # another MAC
        lambda v: v.rsplit(".", 1)[0],  # no MAC
        lambda v: "",
        lambda v: "a.b.c",
        lambda v: v + "é",
    ],
)
def test_a_tampered_cookie_names_no_session(forge: Callable[[str], str]) -> None:
    signer = CookieSigner(b"k" * 32, 900, Clock())
    assert signer.verify(forge(signer.sign("session-1"))) is None


def test_a_cookie_signed_with_another_secret_names_no_session() -> None:
    clock = Clock()
    value = CookieSigner(b"k" * 32, 900, clock).sign("session-1")
    assert CookieSigner(b"other" * 8, 900, clock).verify(value) is None
    assert "k" * 32 not in repr(CookieSigner(b"k" * 32, 900, clock))


def test_a_state_is_taken_once_and_only_while_fresh() -> None:
    clock = Clock()
    store = SessionStore(clock)
    launch = PendingLaunch(FHIR_BASE, TOKEN_URL, "verifier", None, clock.now)
    store.add_launch("s1", launch)
    assert store.take_launch("s1") == launch
    assert store.take_launch("s1") is None
    store.add_launch("s2", launch)
    clock.now += PENDING_SECONDS + 1
    assert store.take_launch("s2") is None
    assert "verifier" not in repr(launch)


def test_a_session_ends_at_its_expiry_and_its_repr_holds_no_token() -> None:
    clock = Clock()
    store = SessionStore(clock)
    session = AppSession(FHIR_BASE, "p1", ACCESS_TOKEN, None, clock.now + 60)
    session_id = store.add_session(session)
    assert store.session(session_id) == session and ACCESS_TOKEN not in repr(session)
    clock.now += 60
    assert store.session(session_id) is None


def test_app_context_names_a_finding_only_as_a_uuid() -> None:
    assert finding_from_app_context(orjson.dumps({"program": "hiv", "finding": FINDING}).decode()) == FINDING
    assert finding_from_app_context('{"finding": "x\\" onload=\\"alert(1)"}') is None
    assert finding_from_app_context("not json") is None
    assert finding_from_app_context(None) is None


# Launch, callback and page, in-process --------------------------------------------------------------------------------


class SmartFhir:
    """The FHIR server with its SMART configuration and token endpoint, as one MockTransport handler."""

    def __init__(self, token_status: int = 200, app_context: str | None = None) -> None:
        bundle = load_fixture("hiv/fail-basic.json")
        self.resources = resources_of(bundle)
        self.token_status = token_status
        self.app_context = app_context
        self.token_forms: list[dict[str, str]] = []
        self.fhir_auth: set[str | None] = set()
        self.fhir_status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == f"{FHIR_BASE}/.well-known/smart-configuration":
            return httpx.Response(200, json={"authorization_endpoint": AUTHORIZE, "token_endpoint": TOKEN_URL})
        if url == TOKEN_URL:
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            self.token_forms.append(form)
            if self.token_status != 200:
                return httpx.Response(self.token_status, json={"error": "invalid_grant"})
            body: dict[str, Any] = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "patient": "hiv-fail-basic"}
            if self.app_context:
                body["appContext"] = self.app_context
            return httpx.Response(200, json=body)
        self.fhir_auth.add(request.headers.get("Authorization"))
        if self.fhir_status != 200:
            return httpx.Response(self.fhir_status, json={"resourceType": "OperationOutcome"})
        path = request.url.path.removeprefix(urlsplit(FHIR_BASE).path + "/")
        kind, _, resource_id = path.partition("/")
        found = [r for r in self.resources if r["resourceType"] == kind]
        if resource_id:
            return httpx.Response(200, json=found[0])
        return httpx.Response(200, json=searchset(found))


def app_client(make_client: MakeClient, fhir: SmartFhir, **settings: Any) -> TestClient:
    return make_client(httpx.MockTransport(fhir), signer=None, smart_app_client_id=CLIENT_ID, **settings)


def launch_params(client: TestClient, **query: str) -> dict[str, str]:
    response = client.get("/app/launch", params={"iss": FHIR_BASE, **query}, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(AUTHORIZE + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_without_a_client_id_there_is_no_app(make_client: MakeClient) -> None:
    with make_client(signer=None) as client:
        response = client.get("/app/launch", params={"iss": FHIR_BASE})
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")


def test_an_ehr_launch_asks_for_a_code_with_pkce_s256_and_the_launch_scope(make_client: MakeClient) -> None:
    with app_client(make_client, SmartFhir()) as client:
        params = launch_params(client, launch="xyz")
    assert params["response_type"] == "code" and params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == "http://localhost:8000/app/callback"
    assert params["scope"] == "launch openid fhirUser patient/*.rs"
    assert params["launch"] == "xyz" and params["aud"] == FHIR_BASE
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 40


def test_a_standalone_launch_asks_for_a_patient_and_keeps_the_finding(make_client: MakeClient) -> None:
    fhir = SmartFhir()
    with app_client(make_client, fhir, smart_app_scope="openid patient/*.read") as client:
        params = launch_params(client, finding=FINDING)
        assert params["scope"] == "launch/patient openid patient/*.read" and "launch" not in params
        response = client.get("/app/callback", params={"code": "c", "state": params["state"]}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/app#finding-{FINDING}"
    (form,) = fhir.token_forms
    assert pkce_challenge(form["code_verifier"]) == params["code_challenge"]
    assert form["client_id"] == CLIENT_ID and form["redirect_uri"] == params["redirect_uri"]


def test_an_iss_off_the_allowlist_or_missing_is_refused(make_client: MakeClient) -> None:
    with app_client(make_client, SmartFhir()) as client:
        for query in ({"iss": "https://evil.example.test/fhir"}, {}):
            response = client.get("/app/launch", params=query, follow_redirects=False)
            assert response.status_code == 400 and "<h1>Launch refused</h1>" in response.text


def test_an_unreadable_smart_configuration_is_a_clear_error(make_client: MakeClient) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(404))
    with make_client(transport, signer=None, smart_app_client_id=CLIENT_ID) as client:
        response = client.get("/app/launch", params={"iss": FHIR_BASE}, follow_redirects=False)
    assert response.status_code == 502 and "SMART configuration unavailable" in response.text


def test_the_callback_refuses_an_unknown_state(make_client: MakeClient) -> None:
    with app_client(make_client, SmartFhir()) as client:
        launch_params(client, launch="xyz")
        response = client.get("/app/callback", params={"code": "c", "state": "forged"}, follow_redirects=False)
    assert response.status_code == 400 and "Unknown or expired state" in response.text
    assert "set-cookie" not in response.headers


def test_a_refused_code_is_a_401_page(make_client: MakeClient) -> None:
    with app_client(make_client, SmartFhir(token_status=400)) as client:
        state = launch_params(client, launch="xyz")["state"]
        response = client.get("/app/callback", params={"code": "c", "state": state}, follow_redirects=False)
        again = client.get("/app/callback", params={"code": "c", "state": state}, follow_redirects=False)
    assert response.status_code == 401 and "refused the code (invalid_grant)" in response.text
    assert again.status_code == 400  # a state is good for one callback only
    assert "Traceback" not in response.text


def test_the_page_is_the_patients_timeline_read_with_the_session_token(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    context = orjson.dumps({"program": "hiv", "finding": FINDING}).decode()
    fhir = SmartFhir(app_context=context)
    caplog.set_level("DEBUG")
    with app_client(make_client, fhir, smart_app_session_seconds=600) as client:
        clock = Clock()
        client.app.state.smart_app = AppState(client.app.state.settings, clock)  # type: ignore[attr-defined]
        state = launch_params(client, launch="xyz")["state"]
        callback = client.get("/app/callback", params={"code": "c", "state": state}, follow_redirects=False)
        assert callback.headers["location"] == f"/app#finding-{FINDING}"
        cookie = callback.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/app" in cookie and "Max-Age=600" in cookie
        assert "Secure" not in cookie  # public_url is loopback
        page = client.get("/app")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert 'data-program="hiv"' in page.text and 'id="finding-' in page.text
        assert ACCESS_TOKEN not in page.text and ACCESS_TOKEN not in cookie
        clock.now += 600
        expired = client.get("/app")
    assert fhir.fhir_auth == {f"Bearer {ACCESS_TOKEN}"}
    assert expired.status_code == 401 and "Session expired" in expired.text
    assert ACCESS_TOKEN not in caplog.text


@pytest.mark.parametrize(("fhir_status", "page_status", "title"), [(401, 401, "Session expired"), (500, 502, "Record")])
def test_a_fhir_server_that_refuses_or_fails_gives_an_error_page(
    make_client: MakeClient, fhir_status: int, page_status: int, title: str
) -> None:
    fhir = SmartFhir()
    with app_client(make_client, fhir, fhir_max_retries=0) as client:
        state = launch_params(client, launch="xyz")["state"]
        client.get("/app/callback", params={"code": "c", "state": state}, follow_redirects=False)
        fhir.fhir_status = fhir_status
        page = client.get("/app")
    assert page.status_code == page_status and title in page.text and ACCESS_TOKEN not in page.text


def test_secure_cookies_outside_loopback(make_client: MakeClient) -> None:
    with app_client(make_client, SmartFhir(), public_url="https://fhirsvc.example.test") as client:
        state = launch_params(client, launch="xyz")["state"]
        callback = client.get("/app/callback", params={"code": "c", "state": state}, follow_redirects=False)
    assert "; Secure" in callback.headers["set-cookie"]
    assert callback.headers["location"] == "/app"


def test_a_confidential_client_signs_an_assertion_for_the_token_endpoint(
    make_client: MakeClient, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    fhir = SmartFhir()
    settings = {
        "smart_app_client_type": "confidential",
        "smart_client_id": "backend",
        "smart_private_key_file": key_file,
    }
    with app_client(make_client, fhir, **settings) as client:
        state = launch_params(client, launch="xyz")["state"]
        client.get("/app/callback", params={"code": "c", "state": state}, follow_redirects=False)
    (form,) = fhir.token_forms
    assert "client_id" not in form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = jwt.decode(form["client_assertion"], key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == CLIENT_ID


def test_a_confidential_client_needs_a_key() -> None:
    with pytest.raises(ValueError, match="SMART_PRIVATE_KEY_FILE"):
        Settings(smart_app_client_id=CLIENT_ID, smart_app_client_type="confidential")


# The card's smart link ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["hiv/fail-basic.json", "t2d/ckd-egfr-45.json", "ms/relapse-on-interferon.json"])
def test_second_line_cards_link_to_the_app_with_their_finding(knowledge: Knowledge, fixture: str) -> None:
    (record,) = index_records([FIXTURES / fixture]).records()
    result = evaluate_record(record, knowledge, AS_OF)
    url = "https://fhirsvc.example.test/app/launch"
    linked = cards_with_findings(result, url)
    assert any(finding.status in SECOND_LINE_STATUSES for _, finding in linked)
    for card, finding in linked:
        smart = [link for link in card.links or [] if link.type == "smart"]
        if finding.status in SECOND_LINE_STATUSES:
            (link,) = smart
            assert link.url == url and link.appContext is not None
            assert orjson.loads(link.appContext) == {"program": finding.program, "finding": finding.id}
        else:
            assert smart == []
    for card, _ in cards_with_findings(result):
        assert all(link.type == "absolute" for link in card.links or [])


def test_the_cds_service_adds_the_link_only_with_a_client_id(make_client: MakeClient) -> None:
    request = hook_request("hiv-fail-basic", prefetch_from(load_fixture("hiv/fail-basic.json")))
    with make_client(smart_app_client_id=CLIENT_ID) as client:  # public_url: the default, the JWTs' `aud`
        (card,) = client.post("/cds-services/second-line-patient-view", json=request).json()["cards"]
    (smart,) = [link for link in card["links"] if link["type"] == "smart"]
    assert smart["url"] == "http://localhost:8000/app/launch"
    assert re.fullmatch(r'\{"program":"hiv","finding":"[0-9a-f-]{36}"\}', smart["appContext"])
    with make_client() as client:
        (card,) = client.post("/cds-services/second-line-patient-view", json=request).json()["cards"]
    assert [link["type"] for link in card["links"]] == ["absolute"]
