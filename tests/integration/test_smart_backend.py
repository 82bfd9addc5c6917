"""SMART Backend Services end to end: `fhirsvc poll` gets its token from a strict token endpoint and reads and
writes the token-protected HAPI server with it; the token endpoint refuses tampered and non-conforming assertions.

The token endpoint (tests/integration/token_server.py) knows our client by the JWK Set that fhirsvc itself
publishes at /.well-known/jwks.json, and issues the one token the protected HAPI endpoint accepts. HAPI serves no
.well-known/smart-configuration, so FHIRSVC_SMART_TOKEN_URL names the endpoint (discovery is unit-tested).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fhirsvc.fhir.auth import CLIENT_ASSERTION_TYPE, SigningKey, SmartBackendAuth, load_key_set
from fhirsvc.sandbox import load
from tests.conftest import MakeClient
from tests.integration.hapi import copies_of, fhir_get
from tests.integration.token_server import RegisteredClient, TokenServer

pytestmark = [pytest.mark.hapi]

CLIENT_ID = "fhirsvc-poller-test"
KID = "poller-2026"
AS_OF = "2026-06-01"


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("smart") / "poller-key.pem"
    path.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def published_jwks(key_file: Path, make_client: MakeClient) -> dict[str, Any]:
    """What an EHR administrator registers: fhirsvc's own /.well-known/jwks.json."""
    with make_client(smart_client_id=CLIENT_ID, smart_private_key_file=key_file, smart_kid=KID) as client:
        response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    jwks: dict[str, Any] = response.json()
    assert [k["kid"] for k in jwks["keys"]] == [KID] and "d" not in jwks["keys"][0]
    return jwks


@pytest.fixture
def token_server(hapi_token_server: tuple[str, str], published_jwks: dict[str, Any]) -> Iterator[TokenServer]:
    _, hapi_token = hapi_token_server
    server = TokenServer(RegisteredClient(CLIENT_ID, published_jwks), access_token=hapi_token).start()
    yield server
    server.stop()


def load_own_patient(base: str, token: str, folder: Path) -> tuple[str, str]:
    """A copy of fail-basic that only this test reads, and the server's own time of loading it: polling from then,
    only what this test loads counts as changed (the server is shared with the other integration tests)."""
    paths, ids = copies_of(["fail-basic"], folder)
    patient = load(base, paths, token).patients[ids["fail-basic"]]
    updated = fhir_get(f"{base}/Patient/{patient}", token).raise_for_status().json()["meta"]["lastUpdated"]
    since = datetime.fromisoformat(updated.replace("Z", "+00:00")).astimezone(UTC)
    return patient, since.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def poll_env(tmp_path: Path, key_file: Path, token_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FHIRSVC_STORE_URL": f"sqlite:///{tmp_path / 'poll.db'}",
        "FHIRSVC_TODAY": AS_OF,
        "FHIRSVC_SMART_CLIENT_ID": CLIENT_ID,
        "FHIRSVC_SMART_PRIVATE_KEY_FILE": str(key_file),
        "FHIRSVC_SMART_KID": KID,
        "FHIRSVC_SMART_TOKEN_URL": token_url,
    }


def poll_once(base: str, env: dict[str, str], since: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fhirsvc.cli", "poll", "--fhir-server", base, "--once", "--since", since]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def search(base: str, token: str, query: str) -> list[dict[str, Any]]:
    response = fhir_get(f"{base}/{query}", token)
    response.raise_for_status()
    return [entry["resource"] for entry in response.json().get("entry", [])]


def test_poll_with_backend_services_reads_and_writes_the_protected_server(
    hapi_token_server: tuple[str, str], token_server: TokenServer, key_file: Path, tmp_path: Path
) -> None:
    base, hapi_token = hapi_token_server
    patient, since = load_own_patient(base, hapi_token, tmp_path)
    assert fhir_get(f"{base}/Patient/{patient}").status_code == 401  # protected: no token, no data

    result = poll_once(base, poll_env(tmp_path, key_file, token_server.token_url), since)

    assert result.returncode == 0, result.stderr
    assert "1 patients" in result.stderr and "0 failed" in result.stderr, result.stderr
    assert token_server.refusals == [] and token_server.issued >= 1
    assert token_server.scopes[0].split() >= ["system/Patient.rs"]
    # The poller read the patient's data with the issued token and wrote the finding back with it.
    (guidance,) = search(base, hapi_token, f"GuidanceResponse?subject=Patient/{patient}")
    assert guidance["status"] == "success" and "hiv" in guidance["reasonCode"][0]["text"]
    (task,) = search(base, hapi_token, f"Task?patient=Patient/{patient}")
    assert task["status"] == "requested" and task["focus"]["reference"].startswith("GuidanceResponse/")
    for secret in (hapi_token, key_file.read_text().splitlines()[1]):
        assert secret not in result.stderr and secret not in result.stdout


def test_a_poller_whose_key_is_not_registered_gets_no_token_and_writes_nothing(
    hapi_token_server: tuple[str, str], token_server: TokenServer, tmp_path: Path
) -> None:
    base, hapi_token = hapi_token_server
    patient, since = load_own_patient(base, hapi_token, tmp_path)
    impostor = tmp_path / "impostor.pem"  # same client id and kid, another private key
    impostor.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    impostor.chmod(0o600)

    result = poll_once(base, poll_env(tmp_path, impostor, token_server.token_url), since)

    assert result.returncode == 1
    assert "token endpoint answered 401 (invalid_client)" in result.stderr, result.stderr
    assert token_server.issued == 0 and set(token_server.refusals) == {"bad signature"}
    assert search(base, hapi_token, f"GuidanceResponse?subject=Patient/{patient}") == []


def _post(server: TokenServer, assertion: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        **form,
    }
    return httpx.post(server.token_url, data=data, timeout=10)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_the_token_endpoint_checks_assertions_as_smart_requires(token_server: TokenServer, key_file: Path) -> None:
    signing = load_key_set(key_file, KID).signing
    auth = SmartBackendAuth("http://127.0.0.1/fhir", CLIENT_ID, signing, "system/Patient.rs")
    url = token_server.token_url
    good = auth.assertion(url)

    def signed(claims: dict[str, Any], key: SigningKey = signing, alg: str = "ES384", **header: Any) -> str:
        now = int(time.time())
        body = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": url, "exp": now + 120, "jti": str(uuid.uuid4())}
        body.update(claims)
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            key.private_key,
            algorithm=alg,
            headers={"kid": KID, "typ": "JWT", **header},
        )

    first = _post(token_server, good)
    assert first.status_code == 200 and first.json()["token_type"] == "bearer"
    head, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    cases = {
        "jti replayed": good,
        "bad signature": f"{head}.{_b64({**claims, 'jti': str(uuid.uuid4()), 'exp': claims['exp'] + 600})}.{signature}",
        "exp more than five minutes ahead": signed({"exp": int(time.time()) + 600}),
        "claims: ExpiredSignatureError": signed({"exp": int(time.time()) - 5}),
        "claims: MissingRequiredClaimError": signed({"jti": None}),
        "claims: InvalidAudienceError": signed({"aud": "https://elsewhere.example.test/token"}),
        "claims: InvalidIssuerError": signed({"iss": "someone-else"}),
        "sub is not the client_id": signed({"sub": "someone-else"}),
        "alg 'ES256' not allowed": signed(
            {}, SigningKey(KID, "ES256", ec.generate_private_key(ec.SECP256R1())), alg="ES256"
        ),
        "alg 'HS256' not allowed": jwt.encode({"iss": CLIENT_ID}, "secret" * 8, algorithm="HS256"),
        "alg 'none' not allowed": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': KID})}.{_b64(claims)}.",
        "kid not in the registered JWKS": signed({}, kid="another"),
        "typ is not JWT": signed({}, typ="at+jwt"),
        "jku is not the registered JWKS URL": signed({}, jku="https://evil.example.test/jwks.json"),
    }
    for reason, assertion in cases.items():
        response = _post(token_server, assertion)
        assert (response.status_code, response.json()) == (401, {"error": "invalid_client"}), reason
        assert token_server.refusals[-1] == reason
    assert _post(token_server, signed({}), grant_type="authorization_code").status_code == 400
    assert _post(token_server, signed({}), client_assertion_type="urn:other").status_code == 400
    assert token_server.issued == 1
