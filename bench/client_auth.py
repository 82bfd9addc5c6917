"""A CDS client for the load benchmark: its key, its FHIRSVC_CDS_CLIENTS entry, and JWTs signed before the run."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER = "https://ehr.bench.invalid"
PUBLIC_URL = "http://localhost:8000"  # the service's FHIRSVC_PUBLIC_URL default: `aud` is this + the path invoked
TOKEN_LIFETIME_S = 300  # the service refuses longer-lived JWTs (FHIRSVC_CDS_MAX_TOKEN_LIFETIME); signed per run


@dataclass
class BenchClient:
    """ES384, as EHRs sign CDS Hooks calls (CDS Hooks 2.0 #trusting-cds-clients)."""

    kid: str = "bench-1"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def client_config(self) -> dict[str, Any]:
        """This client's FHIRSVC_CDS_CLIENTS entry, its public key inline."""
        public: dict[str, Any] = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"iss": ISSUER, "jwks": {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES384"}]}}

    def tokens(self, count: int, path: str) -> list[str]:
        """`count` JWTs for `path`, each with its own jti: the service refuses a replayed one, as it must.

        Signed before the run, so that the load generator's CPU stays out of the server's way; verifying them is
        the service's cost, and what this measures.
        """
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": PUBLIC_URL + path, "iat": now, "exp": now + TOKEN_LIFETIME_S}
        headers = {"kid": self.kid, "typ": "JWT"}
        return [
            jwt.encode({**claims, "jti": str(uuid.uuid4())}, self.key, algorithm="ES384", headers=headers)
            for _ in range(count)
        ]
