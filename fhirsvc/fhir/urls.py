"""FHIR server base URLs: one canonical identity for the allowlist, the client pool, server profiles and the
store, and whether a link stays under a base."""

from __future__ import annotations

from urllib.parse import urlsplit


def normalise_base_url(url: str) -> str:
    """Canonical form of an http(s) base URL (lower-case scheme and host, no default port, no trailing slash).

    Raises ValueError for anything that is not a plain base URL: another scheme, user info, query or fragment.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(f"a base URL has no user info, query or fragment: {url!r}")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    port = parts.port  # ValueError for a malformed port
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def is_under(url: str, base: str) -> bool:
    """True when `url` is on the same origin and under the base path (paging links must stay there)."""
    target, root = urlsplit(url), urlsplit(base)
    if (target.scheme, target.netloc.lower()) != (root.scheme, root.netloc.lower()):
        return False
    prefix = root.path.rstrip("/")
    return target.path == prefix or target.path.startswith(prefix + "/") or (not prefix)


def fhir_server_allowed(url: str, allowed: list[str]) -> bool:
    """True when `url` is one of the FHIRSVC_FHIR_SERVERS (already normalised; https or listed loopback)."""
    try:
        return normalise_base_url(url) in allowed
    except ValueError:
        return False
