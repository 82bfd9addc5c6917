"""Settings: the one place that reads the environment (prefix FHIRSVC_)."""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerProfile(BaseModel):
    """What one FHIR server needs (fhir-servers.md §3); unknown servers start from the defaults and adapt."""

    medication_statement: bool = Field(default=True, description="False for servers without it (Cerner).")
    observation_categories: list[str] = Field(
        default_factory=list, description="Search Observations once per category (Epic requires a category)."
    )
    page_size: int | None = Field(default=None, ge=1, description="_count to ask for.")


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
    writeback_target: Literal["guidance", "detectedissue", "off"] = Field(
        default="guidance",
        description="What the poller writes: GuidanceResponse + RequestGroup + Task, or DetectedIssue.",
    )
    poll_overlap_seconds: int = Field(default=300, ge=0, description="Re-read window behind each cursor.")
    # Test-only failpoints ("after-writeback:2" = exit after the 2nd patient's write-back) prove crash safety.
    failpoints: list[str] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # Per-server quirks keyed by base URL, e.g.
    # FHIRSVC_SERVER_PROFILES='{"https://fhir-open.cerner.com/r4/x": {"medication_statement": false}}'
    server_profiles: dict[str, ServerProfile] = Field(default_factory=dict)

    def profile_for(self, base_url: str) -> ServerProfile:
        wanted = base_url.rstrip("/")
        for url, profile in self.server_profiles.items():
            if url.rstrip("/") == wanted:
                return profile
        return ServerProfile()

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # `aud` comparison and link building need one canonical form.
        return AnyHttpUrl(str(value).rstrip("/"))

    @property
    def public_base(self) -> str:
        return str(self.public_url).rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
