"""Helpers to turn fixture bundles into CDS Hooks requests and to play a FHIR server in-process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhirsvc.record.model import RECORD_PARTS, bundle_resources

FHIR_BASE = "https://fhir.example.test/r4"
TOKEN = "test-access-token"

# Every search of the record definition, as an EHR fills the discovery's prefetch templates.
_KEY_TYPES = {part.key: part.resource_type for part in RECORD_PARTS if part.key != "patient"}


def searchset(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for _, r in bundle_resources(bundle)]


def prefetch_from(bundle: dict[str, Any]) -> dict[str, Any]:
    """Every prefetch key filled the way an EHR would from the fixture's resources."""
    resources = resources_of(bundle)
    prefetch: dict[str, Any] = {
        key: searchset([r for r in resources if r["resourceType"] == rtype]) for key, rtype in _KEY_TYPES.items()
    }
    prefetch["patient"] = next(r for r in resources if r["resourceType"] == "Patient")
    return prefetch


def hook_request(
    patient_id: str,
    prefetch: dict[str, Any] | None,
    hook: str = "patient-view",
    fhir_server: str | None = None,
    token: str | None = None,
    **context: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id, **context},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server:
        body["fhirServer"] = fhir_server
    if token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "fhirsvc",
        }
    return body


class FakeFhirServer:
    """A tiny FHIR search endpoint over one patient's resources, for httpx.MockTransport.

    Pages `page_size` entries at a time with `next` links, checks the bearer token, and records requests.
    """

    def __init__(self, resources: list[dict[str, Any]], token: str | None = TOKEN, page_size: int = 20) -> None:
        self.resources = resources
        self.token = token
        self.page_size = page_size
        self.requests: list[httpx.Request] = []
        self.overrides: dict[str, Callable[[httpx.Request], httpx.Response]] = {}

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return httpx.Response(401)
        parts = urlsplit(str(request.url))
        path = parts.path[len(urlsplit(FHIR_BASE).path) :].strip("/")
        for prefix, override in self.overrides.items():
            if path.startswith(prefix):
                return override(request)
        query = parse_qs(parts.query)
        if "/" in path:  # read: Type/id
            rtype, rid = path.split("/", 1)
            for r in self.resources:
                if r["resourceType"] == rtype and r.get("id") == rid:
                    return _json(r)
            return _json(
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}, 404
            )
        rtype = path
        matches = [r for r in self.resources if r["resourceType"] == rtype]
        offset = int(query.get("_offset", ["0"])[0])
        page = matches[offset : offset + self.page_size]
        more = offset + self.page_size < len(matches)
        next_url = f"{FHIR_BASE}/{rtype}?patient={query.get('patient', [''])[0]}&_offset={offset + self.page_size}"
        return _json(searchset(page, next_url if more else None))


def _json(body: dict[str, Any], status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"Content-Type": "application/fhir+json"})


# CDS client JWTs (CDS Hooks 2.0 #trusting-cds-clients) ------------------------------------------------------------

PUBLIC_URL = "http://localhost:8000"  # Settings.public_url's default: every `aud` is this + the path invoked
CLIENT_ISS = "https://ehr.example.test"


class Signer:
    """A CDS client: a key pair generated for the test, its JWKS, and JWTs signed the way an EHR signs them."""

    def __init__(self, alg: str = "ES384", kid: str = "test-key-1", iss: str = CLIENT_ISS) -> None:
        self.alg, self.kid, self.iss = alg, kid, iss
        self.private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
            self.private_key = ec.generate_private_key(curve)
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            key: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            key = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**key, "kid": self.kid, "use": "sig", "alg": self.alg}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def client_config(self, jwks_url: str | None = None) -> dict[str, Any]:
        """This client's FHIRSVC_CDS_CLIENTS entry: its JWKS inline, or the URL it is served from."""
        return {"iss": self.iss, "jwks_url": jwks_url} if jwks_url else {"iss": self.iss, "jwks": self.jwks()}

    def token(self, path: str, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A JWT for the endpoint at `path`; a claim or header given as None is left out."""
        now = int(time.time())
        body = {"iss": self.iss, "aud": PUBLIC_URL + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        body.update(claims)
        header = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            self.private_key,
            algorithm=self.alg,
            headers={k: v for k, v in header.items() if v is not None},
        )


class SignedCalls(httpx2.Auth):
    """TestClient auth: a fresh JWT (new jti, `aud` = the URL invoked) on every request."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.signer.token(request.url.path)}"
        yield request


CLIENT = Signer()  # the trusted EHR of the API tests
