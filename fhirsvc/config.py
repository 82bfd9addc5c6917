"""Settings: the one place that reads the environment (prefix FHIRSVC_)."""

from __future__ import annotations

import ipaddress
import json
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, AnyHttpUrl, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fhirsvc.fhir.urls import normalise_base_url, origin


class ServerProfile(BaseModel):
    """What one FHIR server needs (fhirsvc/fhir/quirks.py); unknown servers start from the defaults and adapt."""

    medication_statement: bool = Field(default=True, description="False for servers without it (Cerner).")
    observation_categories: list[str] = Field(
        default_factory=list, description="Search Observations once per category (Epic requires a category)."
    )
    page_size: int | None = Field(default=None, ge=1, description="_count to ask for.")
    bulk_storage_origins: list[str] = Field(
        default_factory=list,
        description="Origins (https://host[:port]) besides the server's own that Bulk Data export files may come "
        "from, e.g. the object store its manifests link to; files anywhere else are never downloaded.",
    )

    @field_validator("bulk_storage_origins")
    @classmethod
    def _bare_origins(cls, value: list[str]) -> list[str]:
        origins = []
        for url in value:
            normalised = require_https(url)
            if normalised != origin(normalised):
                raise ValueError(f"a storage origin is scheme://host[:port], without a path: {url!r}")
            origins.append(normalised)
        return origins


# ---- Trust and failure: helpers for the settings block at the end of Settings ----------------------------------------

# Algorithms a CDS client may sign with: asymmetric only. CDS Hooks 2.0 #jwt-signing-algorithm: `none` and symmetric
# (HMAC) algorithms SHALL NOT be used, so they cannot even be configured.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: the only hosts reachable over plain http."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https(url: str) -> str:
    """https, or http to a loopback address (local test servers); returns the normalised URL."""
    normalised = normalise_base_url(url)
    parts = urlsplit(normalised)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        raise ValueError(f"https is required (plain http only for loopback addresses): {url!r}")
    return normalised


class CdsClientConfig(BaseModel):
    """One trusted CDS client: its `iss`, where its public keys are (a JWKS URL, or the JWKS itself), and the FHIR
    servers whose patients it may read through GET /patients/{id}/therapy."""

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    fhir_servers: list[str] = Field(
        default_factory=list, description="FHIR base URLs this client is registered for (none: no stored state)."
    )

    @field_validator("fhir_servers")
    @classmethod
    def _server_identities(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(require_https(url) for url in value))

    @model_validator(mode="after")
    def _one_key_source(self) -> CdsClientConfig:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError(f"CDS client {self.iss!r}: give exactly one of jwks_url and jwks")
        if self.jwks_url is not None:
            self.jwks_url = require_https(self.jwks_url)
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError(f'CDS client {self.iss!r}: jwks must be a JWK Set ({{"keys": [...]}})')
        return self


# ---- end of the trust and failure helpers ----------------------------------------------------------------------------


# ---- SMART Backend Services: helpers for the `smart_*` settings block ------------------------------------------------

# What the poller reads and writes, in SMART v2 scope syntax (c = create, r = read, u = update, s = search).
# Reads: every type the poller searches or a patient fetch asks for (fhirsvc.poll.changes.POLLED_TYPES and
# fhirsvc.cds.services.PREFETCH). Writes: the write-back resources (fhirsvc.render.writeback): conditional creates
# (If-None-Exist is a search, hence `s`), and Tasks read and updated again when a finding is closed. DetectedIssue
# is for FHIRSVC_WRITEBACK_TARGET=detectedissue. A SMART v1 server wants `.read`/`.write`: set FHIRSVC_SMART_SCOPE.
DEFAULT_SMART_SCOPE = " ".join(
    [
        *(
            f"system/{t}.rs"
            for t in (
                "Patient",
                "Condition",
                "Observation",
                "MedicationRequest",
                "MedicationStatement",
                "MedicationAdministration",
                "AllergyIntolerance",
                "Goal",
            )
        ),
        *(f"system/{t}.cs" for t in ("GuidanceResponse", "RequestGroup", "ServiceRequest", "DetectedIssue")),
        "system/Task.crus",
    ]
)


def require_tls_endpoint(url: str) -> str:
    """An absolute https URL (plain http only to loopback), returned unchanged: a token URL is the assertion's
    `aud`, compared by the authorization server as a string, so it is never rewritten."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ValueError(f"https is required (plain http only for loopback addresses): {url!r}")
    return url


# ---- end of SMART Backend Services helpers ---------------------------------------------------------------------------


class Settings(BaseSettings):
    """Service configuration; every field can be set as FHIRSVC_<FIELD> (nested with __)."""

    model_config = SettingsConfigDict(env_prefix="FHIRSVC_", env_nested_delimiter="__", extra="ignore")

    public_url: Annotated[
        AnyHttpUrl,
        Field(description="Externally visible base URL of this service (JWT `aud`, links)."),
    ] = AnyHttpUrl("http://localhost:8000")
    store_url: str = Field(default="sqlite:///fhirsvc.db", description="SQLAlchemy URL of the store.")

    # FHIR client: explicit timeouts (seconds) and retry policy for outbound calls.
    fhir_connect_timeout: float = 3.0
    fhir_read_timeout: float = 10.0
    fhir_max_retries: int = Field(default=2, ge=0, le=10)
    fhir_backoff_seconds: float = Field(default=0.25, ge=0)
    fhir_max_retry_after: float = Field(default=5.0, ge=0, description="Longest Retry-After we will wait.")
    fhir_max_pages: int = Field(default=20, ge=1, description="Cap on `next` links followed per search.")
    fhir_max_connections: int = Field(default=10, ge=1)

    # Program parameters overridable without editing YAML, keyed "<program>.<parameter>",
    # e.g. FHIRSVC_THRESHOLDS='{"hiv.failure_threshold": 1000}' for the WHO threshold.
    thresholds: dict[str, float] = Field(default_factory=dict)
    today: date | None = Field(
        default=None, description="Pin the evaluation date (demos against fixtures, reproducible sandbox runs)."
    )
    programs: list[str] = Field(default_factory=list, description="Enabled programs; empty = all.")

    feedback_suppress_days: int = Field(
        default=30, ge=0, description="A card overridden with a reason is not shown again for the same evidence."
    )
    feedback_suppress_scope: Literal["clinician", "client"] = Field(
        default="clinician",
        description="Whom an override hides the card from: the clinician who overrode it, or every clinician of "
        "the same CDS client (always for the same FHIR server and patient).",
    )
    writeback_target: Literal["guidance", "detectedissue", "off"] = Field(
        default="guidance",
        description="What the poller and `fhirsvc write-back` write: GuidanceResponse + RequestGroup + Task, or "
        "DetectedIssue.",
    )
    writeback_evidence: bool = Field(
        default=False,
        description="Attach the first-line evidence document (step therapy) to the Task of a next-line finding.",
    )
    writeback_max_retry_after: float = Field(
        default=120.0,
        ge=0,
        description="Longest Retry-After `fhirsvc write-back` waits on a 429/503 (a batch job: no caller waiting).",
    )
    poll_overlap_seconds: int = Field(default=300, ge=0, description="Re-read window behind each cursor.")
    # Test-only failpoints ("after-writeback:2" = exit after the 2nd write-back transaction) prove crash safety.
    failpoints: list[str] = Field(default_factory=list)
    # Browser origins allowed to call (CORS). Closed by default: EHRs call server to server; a browser-based client
    # (the CDS Hooks sandbox, a SMART app) is listed by origin, e.g. '["https://sandbox.cds-hooks.org"]'.
    cors_origins: list[str] = Field(
        default_factory=list, description='Browser origins allowed (CORS); empty = none, ["*"] = any.'
    )
    # Per-server quirks keyed by base URL, e.g.
    # FHIRSVC_SERVER_PROFILES='{"https://fhir-open.cerner.com/r4/x": {"medication_statement": false}}'
    server_profiles: dict[str, ServerProfile] = Field(default_factory=dict)

    def profile_for(self, base_url: str) -> ServerProfile:
        return self.server_profiles.get(normalise_base_url(base_url)) or ServerProfile()

    @field_validator("server_profiles")
    @classmethod
    def _profiles_by_server_identity(cls, value: dict[str, ServerProfile]) -> dict[str, ServerProfile]:
        # Keyed like the client pool and the allowlist, so `https://FHIR.example.org:443/r4/` finds its profile.
        return {normalise_base_url(url): profile for url, profile in value.items()}

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # `aud` comparison and link building need one canonical form.
        return AnyHttpUrl(str(value).rstrip("/"))

    @property
    def public_base(self) -> str:
        return str(self.public_url).rstrip("/")

    # ---- Trust and failure: CDS client JWTs, outbound allowlist, time budget, logs, body limit -----------------------
    # CDS Hooks 2.0 #trusting-cds-clients: every service and feedback call carries a JWT from an allowlisted client.
    cds_auth: Literal["on", "off"] = Field(
        default="on", description="off skips the CDS client JWT check: local development only (warned at start-up)."
    )
    cds_auth_discovery: bool = Field(default=False, description="Require a client JWT on GET /cds-services too.")
    cds_clients: list[CdsClientConfig] = Field(
        default_factory=list,
        description='Trusted CDS clients, e.g. \'[{"iss": "https://ehr.example", "jwks_url": "https://ehr.example/jwks"}]\'.',
    )
    cds_algorithms: list[str] = Field(
        default_factory=lambda: ["ES384", "RS384"], description="JWT algorithms accepted (asymmetric only)."
    )
    cds_leeway_seconds: int = Field(default=60, ge=0, le=600, description="Clock skew allowed on exp, iat and nbf.")
    # CDS Hooks 2.0 #trusting-cds-clients recommends that a client JWT expires within five minutes.
    cds_max_token_lifetime: int = Field(
        default=300, ge=1, le=86400, description="Longest client JWT accepted, in seconds (exp - iat, and exp - now)."
    )
    # Outbound allowlist: the only FHIR servers a CDS call may make us fetch from (never a proxy to anywhere).
    fhir_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed fhirServer base URLs: comma-separated, or a JSON list."
    )
    cds_time_budget: float = Field(
        default=2.0, gt=0, le=60, description="Seconds a CDS call may take, FHIR fetches included."
    )
    log_salt: SecretStr | None = Field(
        default=None, description="Salt for patient id hashes in logs; unset = random per process."
    )
    # Bounded work per request. 10 MB holds a 10,000-resource prefetch (6.3 MB in bench/), far more than a chart
    # carries; a larger body only costs parsing time and memory. 50,000 resources: past every real chart (the bench
    # population averages 40 per patient), while 100,000 tiny hostile resources still fit in 10 MB.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest request body accepted.")
    max_resources_per_request: int = Field(
        default=50_000, ge=1, description="Most resources in one CDS call (prefetch Bundles' entries + draftOrders)."
    )
    # 64 Ki characters: well past a clinical note in Medication.code.text or an annotation; a longer string only feeds
    # the per-text memos and the logs of whoever reads it.
    max_text_chars: int = Field(default=64 * 1024, ge=1, description="Longest string in a CDS call, in characters.")
    # Evaluation is pure Python (one core per process under the GIL): more threads add no throughput, only let a
    # stuck call hold more memory. The rest of the budget after fetching is what a call waits for its evaluation.
    max_concurrent_evaluations: int = Field(
        default=4, ge=1, le=64, description="Evaluations running at once per process; others wait their turn."
    )
    # A static bearer token for `poll` and `sandbox` comes from the environment or a file, never from argv (which
    # every user of the machine can read in `ps` and /proc/<pid>/cmdline).
    fhir_token: SecretStr | None = Field(
        default=None, description="Static bearer token for the FHIR server of `poll` and `sandbox` (or --token-file)."
    )
    # Prometheus multiprocess mode (https://prometheus.github.io/client_python/multiprocess/): prometheus_client
    # reads this very variable, unprefixed, when it is imported; `serve --workers N` sets it for its workers.
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("prometheus_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR"),
        description="Directory of the per-process metric files; set = /metrics adds up every process's counts.",
    )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # An Origin header is scheme://host[:port] and nothing else: a path or trailing slash would never match.
        for allowed in value:
            parts = urlsplit(allowed)
            if allowed != "*" and (
                parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query
            ):
                raise ValueError(f"not a browser origin (scheme://host[:port], or *): {allowed!r}")
        return value

    @field_validator("cds_auth", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("cds_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        refused = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            raise ValueError(f"only asymmetric JWT algorithms can be accepted, not {refused or 'none at all'}")
        return value

    @field_validator("fhir_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        return value

    @field_validator("fhir_servers")
    @classmethod
    def _https_servers(cls, value: list[str]) -> list[str]:
        return [require_https(url) for url in value]

    # ---- end of the trust and failure settings -----------------------------------------------------------------------

    # ---- SMART Backend Services: the poller's own credentials --------------------------------------------------------
    # https://hl7.org/fhir/smart-app-launch/backend-services.html: client_credentials with a private_key_jwt
    # assertion. Used by `fhirsvc poll` when smart_client_id is set; our public keys are at /.well-known/jwks.json.
    smart_client_id: str | None = Field(default=None, description="client_id registered with the FHIR server's EHR.")
    smart_private_key_file: Path | None = Field(
        default=None,
        description="Our signing key: a PEM private key (RSA ≥ 2048 bits → RS384, EC P-384 → ES384), or a JSON "
        "JWK Set holding it (other keys in the set are published too, e.g. during a rotation).",
    )
    smart_kid: str | None = Field(
        default=None, description="kid of the signing key (default: the JWK's kid, else its RFC 7638 thumbprint)."
    )
    smart_scope: str = Field(default=DEFAULT_SMART_SCOPE, min_length=1, description="Scopes to ask for.")
    smart_token_url: str | None = Field(
        default=None,
        description="Token endpoint; set it to skip discovery ({fhirBase}/.well-known/smart-configuration).",
    )

    @field_validator("smart_token_url")
    @classmethod
    def _tls_token_url(cls, value: str | None) -> str | None:
        return None if value is None else require_tls_endpoint(value)

    @model_validator(mode="after")
    def _smart_key_with_client(self) -> Settings:
        if (self.smart_client_id is None) != (self.smart_private_key_file is None):
            raise ValueError("FHIRSVC_SMART_CLIENT_ID and FHIRSVC_SMART_PRIVATE_KEY_FILE go together")
        return self

    # ---- end of SMART Backend Services settings ----------------------------------------------------------------------

    # ---- SMART App Launch: the timeline page opened from the EHR (fhirsvc/api/smart_app.py) --------------------------
    # https://hl7.org/fhir/smart-app-launch/app-launch.html: authorization code with PKCE S256. `launch` (EHR launch)
    # or `launch/patient` (standalone launch) is added to smart_app_scope per launch.
    smart_app_client_id: str | None = Field(
        default=None, description="client_id of the timeline app; unset = no /app routes and no smart card links."
    )
    smart_app_client_type: Literal["public", "confidential"] = Field(
        default="public",
        description="public: client_id only; confidential: private_key_jwt signed with FHIRSVC_SMART_PRIVATE_KEY_FILE.",
    )
    smart_app_redirect_uri: str | None = Field(
        default=None, description="Registered redirect URI (default: public_url + /app/callback)."
    )
    smart_app_scope: str = Field(default="openid fhirUser patient/*.rs", min_length=1, description="Scopes asked for.")
    smart_app_session_seconds: int = Field(
        default=900, ge=60, le=43200, description="Lifetime of an app session (cookie and server-side tokens)."
    )
    smart_app_session_secret: SecretStr | None = Field(
        default=None, description="HMAC key of the session cookie; unset = random per process (sessions die with it)."
    )

    @property
    def smart_app_launch_url(self) -> str | None:
        """The app's launch URL for CDS Hooks `smart` links; None when the app is not configured."""
        return f"{self.public_base}/app/launch" if self.smart_app_client_id else None

    @property
    def smart_app_callback_url(self) -> str:
        return self.smart_app_redirect_uri or f"{self.public_base}/app/callback"

    @model_validator(mode="after")
    def _confidential_app_has_a_key(self) -> Settings:
        if self.smart_app_client_type == "confidential" and self.smart_private_key_file is None:
            raise ValueError("FHIRSVC_SMART_APP_CLIENT_TYPE=confidential needs FHIRSVC_SMART_PRIVATE_KEY_FILE")
        return self

    # ---- end of SMART App Launch settings ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
