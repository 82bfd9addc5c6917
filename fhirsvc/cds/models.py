"""CDS Hooks 2.0 request and response models (https://cds-hooks.hl7.org/2.0/)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class _Lenient(BaseModel):
    # 3.0-ballot and vendor fields (`extension`, Epic extras) are tolerated, not rejected.
    model_config = ConfigDict(extra="allow")


class FhirAuthorization(_Lenient):
    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:  # never let the token reach a log line or a traceback
        return f"FhirAuthorization(token_type={self.token_type!r}, scope={self.scope!r})"

    __str__ = __repr__


class CdsRequest(_Lenient):
    """A hook invocation. Prefetch values stay raw dicts: they are read by the fact extractors, not modelled."""

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)
    context: dict[str, Any] = Field(
        json_schema_extra={
            "required": ["patientId"],
            "properties": {"patientId": {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,64}$"}},
        }
    )
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _conditional_fields(self) -> CdsRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirServer is required when fhirAuthorization is present")
        if self.fhirServer and not self.fhirServer.startswith(("http://", "https://")):
            raise ValueError("fhirServer must be an absolute http(s) URL")
        patient = self.context.get("patientId")
        # A FHIR id (R4 datatypes #id): it is put into FHIR search URLs, where `&`, `?` or `#` would change the query.
        if not isinstance(patient, str) or FHIR_ID.fullmatch(patient) is None:
            raise ValueError("context.patientId is required and must be a FHIR resource id ([A-Za-z0-9-.]{1,64})")
        return self

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])


class Coding(BaseModel):
    system: str
    code: str
    display: str | None = None


class Source(BaseModel):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(BaseModel):
    label: str
    uuid: str
    isRecommended: bool | None = None
    actions: list[Action] = Field(default_factory=list)


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] = Field(default_factory=list)
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)

    @model_validator(mode="after")
    def _selection_rules(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when a card has suggestions")
        if self.selectionBehavior == "at-most-one" and sum(bool(s.isRecommended) for s in self.suggestions) > 1:
            raise ValueError("at most one suggestion may be recommended with at-most-one (cds-resp-1)")
        return self


class CdsResponse(BaseModel):
    cards: list[Card]


class ServiceDescription(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str | None = None


class Discovery(BaseModel):
    services: list[ServiceDescription]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its `$defs` substituted in place, for an OpenAPI requestBody of a route that
    reads the raw body (so FastAPI does not document it). The models here have no recursive references."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_CONTAINERS = (dict, list)


def compact(value: Any) -> Any:
    """Drop None, empty strings, lists and objects (CDS Hooks §Use of JSON); `cards: []` is kept by the caller.

    Only containers are walked: a card holds mostly strings, and a call per string made this a tenth of a hook call
    on small records (bench/README.md). Emptiness is tested by what a value is (a container after compaction,
    else None or ""), not by `in (None, "", [], {})`, and containers by a tuple, not `dict | list` (a union object
    built per test): each cost about as much as the walk itself.
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(item, _CONTAINERS):
                item = compact(item)
                if item:
                    out[key] = item
            elif item is not None and item != "":
                out[key] = item
        return out
    if isinstance(value, list):
        kept = []
        for item in value:
            if isinstance(item, _CONTAINERS):
                item = compact(item)
                if item:
                    kept.append(item)
            elif item is not None and item != "":
                kept.append(item)
        return kept
    return value


def response_body(cards: list[Card]) -> dict[str, Any]:
    return {"cards": [compact(card.model_dump(mode="json", exclude_none=True)) for card in cards]}
