"""FHIR R4 over httpx: one pooled AsyncClient per server, timeouts, retries honouring Retry-After, paging."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson

from fhirsvc.config import Settings
from fhirsvc.fhir.errors import (
    FhirError,
    FhirInvalidResponse,
    FhirServerError,
    FhirTransportError,
    FhirUnsafeLink,
    response_error,
)
from fhirsvc.fhir.urls import link_under, normalise_base_url

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
# Statuses worth retrying: rate limiting and transient server/gateway faults.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass
class SearchResult:
    """Resources from every page of a search, and OperationOutcome entries the server put in the bundles."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0
    truncated: bool = False  # the server holds more matches than were read (page cap, or a server-side limit)
    duplicates: int = 0
    matches: int = 0  # entries with search.mode "match" (or no mode), duplicates included
    total: int | None = None  # Bundle.total of the first page, when the server sent one
    seen: set[tuple[Any, Any]] = field(default_factory=set, repr=False)

    def add(self, resource: dict[str, Any]) -> None:
        """Keep a resource unless one with the same type and id is already here.

        Cerner can return the same resource on two pages (its published R4 conventions): the first copy wins.
        """
        key = (resource.get("resourceType"), resource.get("id"))
        if isinstance(key[0], str) and isinstance(key[1], str):  # a list id (hostile server) is unhashable
            if key in self.seen:
                self.duplicates += 1
                return
            self.seen.add(key)
        self.resources.append(resource)

    def extend(self, other: SearchResult) -> None:
        for resource in other.resources:
            self.add(resource)
        self.outcomes += other.outcomes
        self.pages += other.pages
        self.matches += other.matches
        self.truncated = self.truncated or other.truncated

    def check_total(self) -> None:
        """Mark the result truncated when the server said it has more matches than its pages held.

        HAPI stops offering `next` after 10,000 results of one search (hapi-fhir#3599) while `total` still counts
        them all: without this check the missing results would read as "not on file".
        """
        if self.total is not None and self.matches < self.total:
            self.truncated = True


def bundle_total(bundle: dict[str, Any]) -> int | None:
    """A searchset's `total`, when the server sent a usable one."""
    total = bundle.get("total")
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class FhirClient:
    """Reads and searches one FHIR server. The bearer token is per call (CDS Hooks hands one per request), or comes
    from the httpx client's auth (SMART Backend Services, the poller; see FhirClientPool.client)."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, settings: Settings) -> None:
        self.base_url = normalise_base_url(base_url)
        self._http = http
        self._settings = settings
        self.profile = settings.profile_for(self.base_url)
        # Quirks found at run time (e.g. a 400 on MedicationStatement search), remembered for this process.
        self.learned: set[str] = set()

    @property
    def http(self) -> httpx.AsyncClient:
        return self._http

    def url(self, path_or_url: str) -> str:
        if "://" in path_or_url:
            return path_or_url
        return urljoin(self.base_url + "/", path_or_url.lstrip("/"))

    async def get_json(self, path_or_url: str, token: str | None = None) -> dict[str, Any]:
        """GET one FHIR JSON body, retrying temporary faults; raises a FhirError subclass otherwise."""
        url = self.url(path_or_url)
        # no-cache: HAPI reuses identical search results for 60 s unless told not to (its 60 s search-result cache);
        # a poller or a CDS call must see what was just written.
        headers = {"Accept": FHIR_JSON, "Cache-Control": "no-cache"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return await self._with_retries("GET", url, headers, None)

    async def _with_retries(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> dict[str, Any]:
        """Send a request, retrying transport faults and RETRY_STATUSES (the server's Retry-After first)."""
        attempts = self._settings.fhir_max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(method, url, headers=headers, content=content)
            except httpx.TransportError as exc:
                if last:
                    raise FhirTransportError(f"{type(exc).__name__} talking to the FHIR server") from exc
                await asyncio.sleep(self._backoff(attempt, None) or 0.0)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                wait = self._backoff(attempt, response.headers.get("Retry-After"))
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
            if response.status_code >= 400:
                raise response_error(response.status_code, url, _outcome(response))
            return _json_body(response)
        raise FhirServerError(503, url)  # unreachable: the last attempt returns or raises

    async def post_json(
        self, path: str, body: dict[str, Any], token: str | None = None, retry: bool = False
    ) -> dict[str, Any]:
        """POST a FHIR body (a transaction to the base when `path` is empty). Not retried unless `retry`: the
        poller's writes are idempotent (If-None-Exist), so its next cycle repeats them safely instead; a batch job
        with no next cycle (the worklist write-back) retries them here, honouring Retry-After like a read."""
        if retry:
            url = self.url(path) if path else self.base_url
            return await self._with_retries("POST", url, self._write_headers(token, None), orjson.dumps(body))
        return await self._send("POST", path, body, token)

    async def put_json(
        self, path: str, body: dict[str, Any], token: str | None = None, if_match: str | None = None
    ) -> dict[str, Any]:
        """PUT a resource. With `if_match` (a versionId) the update is version-aware: the server refuses it (412, or
        409 on HAPI) when the resource changed since that version (https://hl7.org/fhir/R4/http.html#concurrency)."""
        return await self._send("PUT", path, body, token, if_match)

    async def _send(
        self, method: str, path: str, body: dict[str, Any], token: str | None, if_match: str | None = None
    ) -> dict[str, Any]:
        url = self.url(path) if path else self.base_url
        headers = self._write_headers(token, if_match)
        try:
            response = await self._http.request(method, url, headers=headers, content=orjson.dumps(body))
        except httpx.TransportError as exc:
            raise FhirTransportError(f"{type(exc).__name__} talking to the FHIR server") from exc
        if response.status_code >= 400:
            raise response_error(response.status_code, url, _outcome(response))
        return _json_body(response)

    @staticmethod
    def _write_headers(token: str | None, if_match: str | None) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if if_match is not None:
            headers["If-Match"] = f'W/"{if_match}"'
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _backoff(self, attempt: int, retry_after: str | None) -> float | None:
        """Seconds to wait: the server's Retry-After, else exponential backoff with jitter; None = give up."""
        asked = retry_after_seconds(retry_after)
        if asked is not None:
            # Waiting longer than we can afford would blow the caller's time budget: fail with the server's answer.
            return asked if asked <= self._settings.fhir_max_retry_after else None
        base = self._settings.fhir_backoff_seconds * float(1 << attempt)
        jitter: float = random.uniform(0, base / 2)  # noqa: S311 (jitter, not security)
        return base + jitter

    async def search(self, query: str, token: str | None = None, max_pages: int | None = None) -> SearchResult:
        """Run a search and follow `next` links on this server only, up to `max_pages`."""
        body = await self.get_json(query, token)
        result = SearchResult()
        self.absorb(body, result)
        result.total = bundle_total(body)
        await self.follow_next(body, result, token, max_pages)
        result.check_total()
        return result

    def absorb(self, bundle: dict[str, Any], result: SearchResult) -> None:
        if bundle.get("resourceType") == "OperationOutcome":
            result.outcomes.append(bundle)
            return
        if bundle.get("resourceType") != "Bundle":
            raise FhirInvalidResponse(f"expected a Bundle, got {bundle.get('resourceType')!r}")
        result.pages += 1
        entries = bundle.get("entry")
        for entry in entries if isinstance(entries, list) else ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            if resource.get("resourceType") == "OperationOutcome":
                result.outcomes.append(resource)
                continue
            search = entry.get("search")
            if not (isinstance(search, dict) and search.get("mode") in ("include", "outcome")):
                result.matches += 1
            result.add(resource)

    async def follow_next(
        self, bundle: dict[str, Any], result: SearchResult, token: str | None, max_pages: int | None = None
    ) -> None:
        cap = max_pages or self._settings.fhir_max_pages
        while (link := next_link(bundle)) is not None:
            if result.pages >= cap:
                result.truncated = True
                log.warning("stopped paging after %d pages", cap)
                return
            # Compared and requested in normalised form: `../` segments are resolved before the check, as httpx
            # resolves them before the request, so the token never goes to another path.
            under = link_under(link, self.base_url)
            if under is None:
                raise FhirUnsafeLink("next link leaves the FHIR server; not followed")
            bundle = await self.get_json(under, token)
            self.absorb(bundle, result)


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise FhirInvalidResponse("response body is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirInvalidResponse("response body is not a FHIR resource")
    return body


def _outcome(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None


class FhirClientPool:
    """One pooled httpx.AsyncClient per FHIR server for the life of the process (opened lazily)."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._clients: dict[str, FhirClient] = {}
        self._http: dict[str, httpx.AsyncClient] = {}

    def client(self, base_url: str, auth: httpx.Auth | None = None) -> FhirClient:
        """The server's client. `auth` (e.g. SMART Backend Services for the poller) is fixed when the client is
        first made and then applies to every request on it; a per-call `token` still wins (CDS Hooks)."""
        base = normalise_base_url(base_url)  # FHIR.example.org, :443 and a trailing slash are one server
        existing = self._clients.get(base)
        if existing is not None:
            if auth is not None and existing.http.auth is not auth:
                raise ValueError("a client for this FHIR server already exists with other credentials")
            return existing
        settings = self._settings
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.fhir_read_timeout, connect=settings.fhir_connect_timeout),
            limits=httpx.Limits(max_connections=settings.fhir_max_connections),
            follow_redirects=False,  # a redirect could carry the bearer token to another host
            transport=self._transport,
            auth=auth,
        )
        self._http[base] = http
        client = self._clients[base] = FhirClient(base, http, settings)
        return client

    async def aclose(self) -> None:
        for http in self._http.values():
            await http.aclose()
        self._http.clear()
        self._clients.clear()


__all__ = ["FhirClient", "FhirClientPool", "FhirError", "SearchResult", "next_link"]
