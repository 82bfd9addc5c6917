"""SMART Backend Services auth with respx: discovery, the assertion, token caching, re-mint on 401, key files, JWKS."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError
from typer.testing import CliRunner

from fhirsvc.cli import app as cli_app
from fhirsvc.config import DEFAULT_SMART_SCOPE, Settings
from fhirsvc.fhir.auth import (
    ASSERTION_LIFETIME_SECONDS,
    CLIENT_ASSERTION_TYPE,
    MAX_ASSERTION_LIFETIME_SECONDS,
    SigningKey,
    SmartAuthError,
    SmartBackendAuth,
    SmartConfigError,
    load_key_set,
    smart_auth,
    thumbprint,
)
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.errors import FhirAuthError
from tests.conftest import MakeClient

BASE = "https://fhir.example.test/r4"
DISCOVERY = f"{BASE}/.well-known/smart-configuration"
TOKEN_URL = "https://auth.example.test/oauth2/token"
CLIENT_ID = "fhirsvc-poller"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
NOW = 1_800_000_000.0

pytestmark = pytest.mark.anyio


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP384R1())


RSA_KEY = rsa_key()
EC_KEY = ec_key()
KEYS = {"RS384": SigningKey("rsa-1", "RS384", RSA_KEY), "ES384": SigningKey("ec-1", "ES384", EC_KEY)}


class Clock:
    """Wall clock (assertion claims) and monotonic clock (token cache), moved by hand."""

    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class TokenEndpoint:
    """A token endpoint for respx: records each form and hands out access-1, access-2, ..."""

    def __init__(self, expires_in: Any = 300, status: int = 200, body: dict[str, Any] | None = None) -> None:
        self.forms: list[dict[str, str]] = []
        self.content_types: list[str] = []
        self.expires_in = expires_in
        self.status = status
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append(form)
        self.content_types.append(request.headers.get("Content-Type", ""))
        if self.status != 200:
            return httpx.Response(self.status, json=self.body or {"error": "invalid_client"})
        body: dict[str, Any] = {"access_token": f"access-{len(self.forms)}", "token_type": "bearer", "scope": "x"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    @property
    def tokens(self) -> int:
        return len(self.forms)


class FhirServer:
    """Answers 200 to the tokens it accepts, 401 otherwise; records the Authorization header of each request."""

    def __init__(self, accept: Callable[[str | None], bool] = lambda auth: auth is not None) -> None:
        self.accept = accept
        self.seen: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization")
        self.seen.append(auth)
        if not self.accept(auth):
            return httpx.Response(401)
        return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_auth(
    http: httpx.AsyncClient, clock: Clock, alg: str = "ES384", token_url: str | None = None
) -> SmartBackendAuth:
    return SmartBackendAuth(
        BASE,
        CLIENT_ID,
        KEYS[alg],
        "system/Patient.rs system/Observation.rs",
        token_url=token_url,
        http=http,
        clock=lambda: clock.wall,
        monotonic=lambda: clock.mono,
    )


def decode(assertion: str, alg: str, audience: str = TOKEN_URL) -> tuple[dict[str, Any], dict[str, Any]]:
    """The assertion verified with the public key, as an authorization server would."""
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(
        assertion,
        KEYS[alg].private_key.public_key(),
        algorithms=[alg],
        audience=audience,
        options={"verify_exp": False, "verify_iat": False, "require": ["iss", "sub", "aud", "exp", "jti"]},
    )
    return header, claims


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_discovers_the_token_endpoint_and_mints_an_assertion_as_smart_requires(
    alg: str, http: httpx.AsyncClient, clock: Clock
) -> None:
    endpoint, fhir = TokenEndpoint(), FhirServer()
    with respx.mock(assert_all_called=True) as mock:
        discovery = mock.get(DISCOVERY).respond(
            json={
                "token_endpoint": TOKEN_URL,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            }
        )
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(f"{BASE}/Patient/p1").mock(side_effect=fhir)
        auth = make_auth(http, clock, alg)
        response = await http.get(f"{BASE}/Patient/p1", auth=auth)
    assert response.status_code == 200
    assert discovery.call_count == 1
    assert fhir.seen == ["Bearer access-1"]
    (form,) = endpoint.forms
    assert endpoint.content_types == ["application/x-www-form-urlencoded"]
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "system/Patient.rs system/Observation.rs"
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert set(form) == {"grant_type", "scope", "client_assertion_type", "client_assertion"}
    header, claims = decode(form["client_assertion"], alg)
    assert header == {"alg": alg, "kid": KEYS[alg].kid, "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert claims["iat"] == int(NOW)
    assert claims["exp"] == int(NOW) + ASSERTION_LIFETIME_SECONDS <= int(NOW) + MAX_ASSERTION_LIFETIME_SECONDS
    assert uuid.UUID(claims["jti"]).version == 4


async def test_each_assertion_has_a_new_jti_and_discovery_happens_once(http: httpx.AsyncClient, clock: Clock) -> None:
    endpoint = TokenEndpoint(expires_in=60)
    with respx.mock(assert_all_called=False) as mock:
        discovery = mock.get(DISCOVERY).respond(json={"token_endpoint": TOKEN_URL})
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(f"{BASE}/Patient/p1").mock(side_effect=FhirServer())
        auth = make_auth(http, clock)
        for _ in range(3):
            await http.get(f"{BASE}/Patient/p1", auth=auth)
            clock.advance(61)
    assert discovery.call_count == 1 and endpoint.tokens == 3
    jtis = {decode(f["client_assertion"], "ES384")[1]["jti"] for f in endpoint.forms}
    assert len(jtis) == 3


async def test_the_token_is_cached_and_shared_by_concurrent_requests(http: httpx.AsyncClient, clock: Clock) -> None:
    endpoint, fhir = TokenEndpoint(), FhirServer()
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(url__startswith=BASE).mock(side_effect=fhir)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        await asyncio.gather(*(http.get(f"{BASE}/Patient/p{i}", auth=auth) for i in range(8)))
        await http.get(f"{BASE}/Patient/p1", auth=auth)
    assert endpoint.tokens == 1 and auth.minted == 1
    assert fhir.seen == ["Bearer access-1"] * 9


@pytest.mark.parametrize(
    ("expires_in", "still_cached_after", "renewed_after"),
    [
        (300, 239, 241),  # renewed a minute before expiry
        (120, 95, 97),  # short-lived: a fifth of the lifetime before
        ("90", 71, 73),  # a number sent as a string still counts
        (None, 239, 241),  # no expires_in: SMART's recommended five minutes
    ],
)
async def test_expires_in_is_honoured(
    expires_in: Any, still_cached_after: float, renewed_after: float, http: httpx.AsyncClient, clock: Clock
) -> None:
    endpoint, fhir = TokenEndpoint(expires_in=expires_in), FhirServer()
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(f"{BASE}/Patient/p1").mock(side_effect=fhir)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        await http.get(f"{BASE}/Patient/p1", auth=auth)
        clock.advance(still_cached_after)
        await http.get(f"{BASE}/Patient/p1", auth=auth)
        assert endpoint.tokens == 1
        clock.advance(renewed_after - still_cached_after)
        await http.get(f"{BASE}/Patient/p1", auth=auth)
    assert endpoint.tokens == 2
    assert fhir.seen == ["Bearer access-1", "Bearer access-1", "Bearer access-2"]


async def test_a_401_re_mints_once_and_repeats_the_request(http: httpx.AsyncClient, clock: Clock) -> None:
    endpoint = TokenEndpoint()
    fhir = FhirServer(accept=lambda auth: auth == "Bearer access-2")  # access-1 was revoked
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.post(BASE).mock(side_effect=fhir)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        response = await http.post(BASE, json={"resourceType": "Bundle"}, auth=auth)
    assert response.status_code == 200
    assert fhir.seen == ["Bearer access-1", "Bearer access-2"]
    assert endpoint.tokens == 2


async def test_a_second_401_stands_and_no_token_loop_follows(http: httpx.AsyncClient, clock: Clock) -> None:
    endpoint, fhir = TokenEndpoint(), FhirServer(accept=lambda auth: False)
    pool = FhirClientPool(Settings(fhir_max_retries=0))
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(f"{BASE}/Patient/p1").mock(side_effect=fhir)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        client = pool.client(BASE, auth=auth)
        with pytest.raises(FhirAuthError):
            await client.get_json("Patient/p1")
    await pool.aclose()
    assert fhir.seen == ["Bearer access-1", "Bearer access-2"] and endpoint.tokens == 2


async def test_concurrent_401s_share_one_re_mint(http: httpx.AsyncClient, clock: Clock) -> None:
    endpoint = TokenEndpoint()
    fhir = FhirServer(accept=lambda auth: auth != "Bearer access-1")
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(url__startswith=BASE).mock(side_effect=fhir)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        await http.get(f"{BASE}/Patient/p0", auth=auth)  # access-1 cached (refused, then access-2)
        assert endpoint.tokens == 2
        responses = await asyncio.gather(*(http.get(f"{BASE}/Patient/p{i}", auth=auth) for i in range(5)))
    assert all(r.status_code == 200 for r in responses) and endpoint.tokens == 2


async def test_the_pool_client_uses_the_auth_and_a_per_call_token_still_wins(
    http: httpx.AsyncClient, clock: Clock
) -> None:
    endpoint, fhir = TokenEndpoint(), FhirServer()
    pool = FhirClientPool(Settings())
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(url__startswith=BASE).mock(side_effect=fhir)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        client = pool.client(BASE + "/", auth=auth)
        assert pool.client(BASE) is client  # the poller's later lookups get the same authenticated client
        with pytest.raises(ValueError, match="other credentials"):
            pool.client(BASE, auth=make_auth(http, clock, token_url=TOKEN_URL))
        await client.get_json("Patient/p1")
        await client.get_json("Patient/p1", token="cds-hooks-token")
        # CDS Hooks clients of another pool are untouched: no auth, the token of the call only.
        other = FhirClientPool(Settings()).client(BASE)
        await other.get_json("Patient/p1", token="cds-hooks-token")
        await other.http.aclose()
    await pool.aclose()
    assert fhir.seen == ["Bearer access-1", "Bearer cds-hooks-token", "Bearer cds-hooks-token"]
    assert endpoint.tokens == 1


async def test_the_token_never_leaves_the_fhir_server(http: httpx.AsyncClient, clock: Clock) -> None:
    endpoint = TokenEndpoint()
    seen: list[str | None] = []

    def elsewhere(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, content=b"{}")

    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(url__startswith="https://bucket.example.test/").mock(side_effect=elsewhere)
        mock.get(url__startswith="https://fhir.example.test/r4-other/").mock(side_effect=elsewhere)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        await http.get("https://bucket.example.test/export/1.ndjson", auth=auth)  # a Bulk Data file link
        await http.get("https://fhir.example.test/r4-other/Patient", auth=auth)  # same host, not under the base
    assert seen == [None, None] and endpoint.tokens == 0


@pytest.mark.parametrize(
    ("status", "body", "attempts", "shown"),
    [
        (401, {"error": "invalid_client", "error_description": "unknown kid"}, 1, "401 (invalid_client: unknown kid)"),
        (400, {"error": "invalid_grant"}, 2, "400 (invalid_grant)"),  # Epic's flaky 400s: one more try
        (503, None, 2, "503"),
    ],
)
async def test_token_endpoint_errors_raise_without_secrets(
    status: int, body: dict[str, Any] | None, attempts: int, shown: str, http: httpx.AsyncClient, clock: Clock
) -> None:
    endpoint = TokenEndpoint(status=status, body=body or {"error": "temporarily_unavailable"})
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        fhir = mock.get(f"{BASE}/Patient/p1").respond(200)
        auth = make_auth(http, clock, token_url=TOKEN_URL)
        with pytest.raises(SmartAuthError) as caught:
            await http.get(f"{BASE}/Patient/p1", auth=auth)
    assert endpoint.tokens == attempts and not fhir.called
    message = str(caught.value)
    assert shown.split(" (")[0] in message and (body is None or shown in message)
    assert endpoint.forms[0]["client_assertion"] not in message and "eyJ" not in message
    assert repr(auth.key) == "SigningKey(kid='ec-1', alg='ES384')" and repr(auth.key) in repr(auth)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (httpx.Response(404), "discovery answered 404"),
        (httpx.Response(200, content=b"<html>"), "not JSON"),
        (httpx.Response(200, json={"authorization_endpoint": "x"}), "no token_endpoint"),
        (httpx.Response(200, json={"token_endpoint": "http://auth.example.test/token"}), "https is required"),
    ],
)
async def test_discovery_failures_are_reported(
    answer: httpx.Response, problem: str, http: httpx.AsyncClient, clock: Clock
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.get(DISCOVERY).mock(return_value=answer)
        token = mock.post(url__regex=".*").respond(200)
        with pytest.raises(SmartAuthError, match=problem):
            await http.get(f"{BASE}/Patient/p1", auth=make_auth(http, clock))
    assert not token.called


async def test_sync_clients_are_refused(clock: Clock) -> None:
    with httpx.Client() as sync, pytest.raises(RuntimeError, match="AsyncClient"):
        sync.get(f"{BASE}/metadata", auth=make_auth(httpx.AsyncClient(), clock, token_url=TOKEN_URL))


# Key files ------------------------------------------------------------------------------------------------------


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key, as_dict=True)
    return {**jwk, **extra}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("key", "alg"), [(RSA_KEY, "RS384"), (EC_KEY, "ES384")])
def test_a_pem_key_signs_with_the_algorithm_of_its_type(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str, tmp_path: Path
) -> None:
    keys = load_key_set(write(tmp_path, "key.pem", pem(key)))
    assert keys.signing.alg == alg
    (public,) = keys.public
    assert public["kid"] == keys.signing.kid == thumbprint(public)  # no kid configured: the RFC 7638 thumbprint
    assert public["alg"] == alg and public["use"] == "sig" and not PRIVATE_MEMBERS & set(public)
    assert load_key_set(write(tmp_path, "key2.pem", pem(key)), kid="chosen").signing.kid == "chosen"


def test_a_jwk_set_file_picks_the_key_by_kid_and_publishes_every_public_key(tmp_path: Path) -> None:
    old, new = ec_key(), rsa_key()
    path = write(
        tmp_path,
        "jwks.json",
        json.dumps(
            {"keys": [private_jwk(old, kid="2025", alg="ES384"), private_jwk(new, kid="2026", alg="RS384")]}
        ).encode(),
    )
    keys = load_key_set(path, kid="2026")
    assert (keys.signing.kid, keys.signing.alg) == ("2026", "RS384")
    assert [k["kid"] for k in keys.public] == ["2026", "2025"]
    assert all(not PRIVATE_MEMBERS & set(k) for k in keys.public)
    assert load_key_set(path).signing.kid == "2025"  # no kid configured: the first private key
    with pytest.raises(SmartConfigError, match="no private key with kid 'gone'"):
        load_key_set(path, kid="gone")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (pem(ec_key(ec.SECP256R1())), "P-384"),
        (pem(rsa_key(1024)), "at least 2048"),
        (b"not a key", "neither an unencrypted PEM"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "not supported"),
        (json.dumps({"keys": [private_jwk(EC_KEY, kid="k", alg="ES256")]}).encode(), "declares alg 'ES256'"),
        (json.dumps({"keys": [{**private_jwk(EC_KEY), "d": None}]}).encode(), "unusable JWK"),
    ],
)
def test_unusable_keys_are_refused_before_anything_is_sent(data: bytes, problem: str, tmp_path: Path) -> None:
    with pytest.raises(SmartConfigError, match=problem):
        load_key_set(write(tmp_path, "key", data))


def test_a_missing_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(SmartConfigError, match="cannot read"):
        load_key_set(tmp_path / "absent.pem")


def test_a_key_file_readable_by_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "key.pem", pem(EC_KEY))
    path.chmod(0o644)
    load_key_set(path)
    assert "chmod 600" in caplog.text and "BEGIN" not in caplog.text


# Settings, the CLI and the JWKS route ---------------------------------------------------------------------------


def smart_options(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """The SMART settings of a poller whose key is EC_KEY, written to `tmp_path`/key.pem."""
    return {"smart_client_id": CLIENT_ID, "smart_private_key_file": write(tmp_path, "key.pem", pem(EC_KEY)), **extra}


def smart_settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(**smart_options(tmp_path, **extra))


def test_settings_need_the_client_id_and_the_key_together_and_a_tls_token_url(tmp_path: Path) -> None:
    assert Settings().smart_scope == DEFAULT_SMART_SCOPE and "system/Task.crus" in DEFAULT_SMART_SCOPE
    with pytest.raises(ValidationError, match="go together"):
        Settings(smart_client_id=CLIENT_ID)
    with pytest.raises(ValidationError, match="https is required"):
        smart_settings(tmp_path, smart_token_url="http://auth.example.test/token")
    local = smart_settings(tmp_path, smart_token_url="http://127.0.0.1:9999/token/")
    assert local.smart_token_url == "http://127.0.0.1:9999/token/"  # the assertion's aud: never rewritten


async def test_smart_auth_from_settings(tmp_path: Path) -> None:
    assert smart_auth(Settings(), BASE) is None
    auth = smart_auth(smart_settings(tmp_path, smart_token_url=TOKEN_URL, smart_kid="poller-1"), BASE + "/")
    assert auth is not None
    assert (auth.fhir_base, auth.client_id, auth.key.kid, auth.key.alg) == (BASE, CLIENT_ID, "poller-1", "ES384")
    assert await auth.token_url() == TOKEN_URL
    await auth.aclose()


def test_poll_refuses_an_unusable_smart_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fhirsvc.config import get_settings

    monkeypatch.setenv("FHIRSVC_SMART_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("FHIRSVC_SMART_PRIVATE_KEY_FILE", str(write(tmp_path, "bad.pem", pem(rsa_key(1024)))))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["poll", "--fhir-server", BASE, "--once"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "at least 2048" in result.output


def test_jwks_route_publishes_public_keys_only(tmp_path: Path, make_client: MakeClient) -> None:
    options = smart_options(tmp_path, smart_kid="poller-1")
    with make_client(**options) as client:
        response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200 and "max-age" in response.headers["Cache-Control"]
    (key,) = response.json()["keys"]
    assert key["kid"] == "poller-1" and key["alg"] == "ES384" and key["kty"] == "EC" and key["crv"] == "P-384"
    assert not PRIVATE_MEMBERS & set(key)
    # The published key verifies what the poller signs.
    auth = SmartBackendAuth(BASE, CLIENT_ID, load_key_set(options["smart_private_key_file"], "poller-1").signing, "s")
    assertion = auth.assertion(TOKEN_URL)
    jwt.decode(assertion, jwt.PyJWK(key).key, algorithms=["ES384"], audience=TOKEN_URL)


def test_jwks_route_without_a_key_is_404_and_with_a_broken_one_503(tmp_path: Path, make_client: MakeClient) -> None:
    with make_client() as client:
        assert client.get("/.well-known/jwks.json").status_code == 404
    options = smart_options(tmp_path)
    options["smart_private_key_file"].write_bytes(b"garbage")
    with make_client(**options) as client:
        response = client.get("/.well-known/jwks.json")
    assert response.status_code == 503 and "garbage" not in response.text


@pytest.mark.parametrize(
    "hostile",
    [
        "https://fhir.example.test/r4/%2e%2e/admin/Patient",  # `..` to servers that decode before routing
        "https://fhir.example.test/r4/..;/admin/Patient",  # `..` to servlet containers
    ],
)
async def test_the_token_never_goes_to_a_path_that_climbs_out_of_the_base(
    http: httpx.AsyncClient, clock: Clock, hostile: str
) -> None:
    endpoint = TokenEndpoint()
    fhir = FhirServer(accept=lambda auth: True)
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(side_effect=endpoint)
        mock.get(url__startswith="https://fhir.example.test/").mock(side_effect=fhir)
        await http.get(hostile, auth=make_auth(http, clock, token_url=TOKEN_URL))
    assert fhir.seen == [None] and endpoint.tokens == 0
