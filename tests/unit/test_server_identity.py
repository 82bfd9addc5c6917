"""One identity per FHIR server: spellings of the same base URL share a pooled client and a server profile."""

from __future__ import annotations

import asyncio

import pytest

from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.fhir.urls import normalise_base_url

SPELLINGS = [
    "https://fhir.example.org/r4",
    "https://FHIR.example.org/r4/",
    "https://fhir.example.org:443/r4",
    "HTTPS://fhir.example.org:0443/r4",
    "https://fhir.example.org/r4/./",
    "https://fhir.example.org/admin/../r4",
    "https://fhir.example.org/%72%34",  # percent-encoded unreserved characters are the characters themselves
    "https://fhir.example.org/r4/x/..",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_spellings_of_one_base_url_are_one_identity(spelling: str) -> None:
    assert normalise_base_url(spelling) == "https://fhir.example.org/r4"


@pytest.mark.parametrize(
    "other", ["https://fhir.example.org:8443/r4", "http://fhir.example.org/r4", "https://fhir.example.org/R4"]
)
def test_another_port_scheme_or_path_is_another_server(other: str) -> None:
    assert normalise_base_url(other) != "https://fhir.example.org/r4"


def test_percent_escapes_that_stay_are_upper_cased() -> None:
    assert normalise_base_url("https://fhir.example.org/a%2ab%7e") == "https://fhir.example.org/a%2Ab~"


@pytest.mark.parametrize(
    "ambiguous",
    [
        "https://fhir.example.org/r4%2Fadmin",  # an encoded slash: one segment to some servers, two to others
        "https://fhir.example.org/r4\\admin",
        "https://fhir.example.org/r4/..;/admin",  # servlet containers resolve `..;x` as `..`
    ],
)
def test_an_ambiguous_path_has_no_identity(ambiguous: str) -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        normalise_base_url(ambiguous)


def test_the_pool_keeps_one_client_per_server_whatever_the_spelling() -> None:
    pool = FhirClientPool(Settings())
    try:
        clients = {id(pool.client(url)) for url in SPELLINGS}
        assert len(clients) == 1
        assert pool.client(SPELLINGS[1]).base_url == "https://fhir.example.org/r4"
    finally:
        asyncio.run(pool.aclose())


def test_a_server_profile_is_found_under_any_spelling() -> None:
    settings = Settings(server_profiles={"https://FHIR.example.org:443/r4/": {"medication_statement": False}})
    assert settings.profile_for("https://fhir.example.org/r4").medication_statement is False
    assert settings.profile_for("https://other.example.org/r4").medication_statement is True
