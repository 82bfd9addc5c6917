"""FHIR server base URLs: one canonical identity for the allowlist, the client pool, server profiles and the
store, and whether a link stays under a base."""

from __future__ import annotations

import re
import string
from urllib.parse import urlsplit

# RFC 3986 §2.3: percent-encoded unreserved characters are equivalent to the characters themselves.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# An encoded slash or a backslash, raw or encoded, is a segment separator to some servers and not to others
# (Jakarta Servlet 6.0 §3.5.2 "URI Path Canonicalization" lets containers decode or reject them): a path holding
# one has no single meaning, so no identity.
_AMBIGUOUS_IN_PATH = ("%2F", "%5C", "\\")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else f"%{match.group(1).upper()}"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute (or empty) path: `/r4/../admin` → `/admin`, `/r4/./x` → `/r4/x`, as httpx
    and servers resolve them before the request goes out."""
    output: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:  # output[0] is the empty segment before the leading slash: never popped
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/".join(output)


def normalise_path(path: str) -> str:
    """RFC 3986 §6.2.2: escapes of unreserved characters decoded, the others upper-cased, dot segments resolved.

    Decoding comes first, so `%2e%2e` counts as `..` (servers that decode before routing treat it so). A path with
    an encoded slash or a backslash, or a dot segment carrying path parameters (`..;x`, which servlet containers
    resolve as `..`), raises ValueError: it has no single meaning.
    """
    path = _PERCENT_ESCAPE.sub(_decode_unreserved, path)
    if any(marker in path.upper() for marker in _AMBIGUOUS_IN_PATH):
        raise ValueError("a URL path with an encoded slash or a backslash is ambiguous")
    if any(segment.partition(";")[0] in (".", "..") and ";" in segment for segment in path.split("/")):
        raise ValueError("a URL path with a dot segment carrying parameters is ambiguous")
    return remove_dot_segments(path)


def normalise_url(url: str) -> str:
    """Canonical form of an absolute http(s) URL: lower-case scheme and host, no default port, the path normalised
    (`normalise_path`), the query kept as sent, no fragment.

    Raises ValueError for another scheme, user info, a malformed port or an ambiguous path.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a FHIR server URL carries no user info")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    port = parts.port  # ValueError for a malformed port
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{normalise_path(parts.path)}{query}"


def normalise_base_url(url: str) -> str:
    """Canonical form of an http(s) base URL (`normalise_url`, and no trailing slash).

    Raises ValueError for anything that is not a plain base URL: another scheme, user info, query or fragment,
    an ambiguous path.
    """
    parts = urlsplit(url.strip())
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL has no query or fragment: {url!r}")
    try:
        return normalise_url(url).rstrip("/")
    except ValueError as exc:
        raise ValueError(f"{exc}: {url!r}") from None


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, normalised like a base URL (a Bulk Data storage origin, say)."""
    parts = urlsplit(normalise_url(url))
    return f"{parts.scheme}://{parts.netloc}"


def link_under(url: str, base: str) -> str | None:
    """The link normalised (what to request, so that what was checked is what is sent) when it is on the base's
    origin and under its path; None when it leaves them or cannot be read."""
    try:
        link, root = urlsplit(normalise_url(url)), urlsplit(normalise_base_url(base))
    except ValueError:
        return None
    if (link.scheme, link.netloc) != (root.scheme, root.netloc):
        return None
    if not root.path or link.path == root.path or link.path.startswith(root.path + "/"):
        return link.geturl()
    return None


def is_under(url: str, base: str) -> bool:
    """True when `url`, normalised, is on the same origin and under the base path (paging links must stay there)."""
    return link_under(url, base) is not None


def fhir_server_allowed(url: str, allowed: list[str]) -> bool:
    """True when `url` is one of the FHIRSVC_FHIR_SERVERS (already normalised; https or listed loopback)."""
    try:
        return normalise_base_url(url) in allowed
    except ValueError:
        return False
