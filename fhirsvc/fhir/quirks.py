"""Searches that adapt to servers they have never seen: server profiles plus automatic fallbacks.

Vendor servers break naive clients. Cerner (the CapabilityStatement and conventions of its open R4 endpoint) has
no MedicationStatement and repeats ids across pages; Epic (open.epic.com, Observation search) answers 400 to an
Observation search without a category; HAPI pages 20 at a time and stops offering `next` after 10,000 results
(hapi-fhir#3599). A profile in the settings says what a known server needs; for an unknown one the first 400/404
teaches the client, which remembers it for the life of the process.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

from fhirsvc.fhir.client import FhirClient, SearchResult
from fhirsvc.fhir.errors import FhirBadRequest, FhirNotFound
from fhirsvc.record.model import RECORD_PARTS

log = logging.getLogger(__name__)

# Observation categories (http://terminology.hl7.org/CodeSystem/observation-category) we need: labs, the cancer
# disease status and pregnancy status, which servers file under exam, imaging, survey or social-history.
DEFAULT_OBSERVATION_CATEGORIES = ("laboratory", "exam", "imaging", "survey", "social-history", "vital-signs")
NO_MEDICATION_STATEMENT = "no-medication-statement"
# Optional types of the record a server may not offer at all (US Core requires none of MedicationStatement,
# MedicationAdministration and Goal): a refused search means "none on this server", not a failure.
_OPTIONAL_SEARCHES = frozenset(part.resource_type for part in RECORD_PARTS if not part.required) - {"Patient"}


def not_offered(resource_type: str) -> str:
    """The learned quirk "this server refuses searches of `resource_type`"."""
    return NO_MEDICATION_STATEMENT if resource_type == "MedicationStatement" else f"no-{resource_type}-search"


OBSERVATION_NEEDS_CATEGORY = "observation-needs-category"


def _with_params(query: str, **params: str) -> str:
    path, _, existing = query.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(existing, keep_blank_values=True) if k not in params]
    return f"{path}?{urlencode([*pairs, *params.items()], safe='|,:/')}"


async def adaptive_search(
    client: FhirClient, query: str, token: str | None, max_pages: int | None = None
) -> SearchResult:
    """Search with the server's profile and learned quirks; fall back once when the server refuses the query."""
    resource_type = query.partition("?")[0]
    profile = client.profile
    if profile.page_size:
        query = _with_params(query, _count=str(profile.page_size))
    if resource_type == "MedicationStatement" and not profile.medication_statement:
        return SearchResult()  # medications then come from MedicationRequest, which is always searched
    if not_offered(resource_type) in client.learned:
        return SearchResult()
    categories = list(profile.observation_categories)
    if resource_type == "Observation" and not categories and OBSERVATION_NEEDS_CATEGORY in client.learned:
        categories = list(DEFAULT_OBSERVATION_CATEGORIES)
    if resource_type == "Observation" and categories:
        return await _per_category(client, query, categories, token, max_pages)
    try:
        return await client.search(query, token, max_pages)
    except (FhirBadRequest, FhirNotFound) as exc:
        if resource_type in _OPTIONAL_SEARCHES:
            client.learned.add(not_offered(resource_type))
            log.info("server refuses %s search (%s): none on this server", resource_type, exc.status)
            return SearchResult()
        if resource_type == "Observation" and isinstance(exc, FhirBadRequest):
            client.learned.add(OBSERVATION_NEEDS_CATEGORY)
            log.info("server refuses Observation search without a category; searching per category")
            return await _per_category(client, query, list(DEFAULT_OBSERVATION_CATEGORIES), token, max_pages)
        raise


async def _per_category(
    client: FhirClient, query: str, categories: list[str], token: str | None, max_pages: int | None
) -> SearchResult:
    combined = SearchResult()
    for category in categories:
        try:
            part = await client.search(_with_params(query, category=category), token, max_pages)
        except FhirBadRequest:
            continue  # a category the server does not know is no data, not a failure
        combined.extend(part)
    return combined
