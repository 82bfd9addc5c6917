"""CodeableConcept reading (codings, "system|code" keys, text) and a memo for answers that depend on a concept alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import orjson

from fhirsvc.memo import MAX_BYTES, SizedMemo

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str = ""

    @property
    def key(self) -> str:
        return f"{self.system}|{self.code}"


def codings(concept: object) -> Iterator[Coding]:
    if not isinstance(concept, dict):
        return
    found = concept.get("coding")
    if not isinstance(found, list):  # a malformed `coding` (a number, an object) holds no codes
        return
    for coding in found:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            yield Coding(str(coding.get("system", "")), coding["code"], str(coding.get("display", "")))


def codes(concept: object) -> list[str]:
    """The codes of every coding, in order, whatever their system (for required bindings such as clinicalStatus)."""
    if not isinstance(concept, dict):
        return []
    found = concept.get("coding")
    if not isinstance(found, list):
        return []
    return [c["code"] for c in found if isinstance(c, dict) and isinstance(c.get("code"), str)]


def concept_keys(concept: object) -> frozenset[str]:
    """ "system|code" of every coding (the hot path: one call per Observation and Condition)."""
    if not isinstance(concept, dict):
        return frozenset()
    found = concept.get("coding")
    if not found or not isinstance(found, list):  # may run before a per-resource guard: never raises
        return frozenset()
    return frozenset(
        f"{c.get('system', '')}|{c['code']}" for c in found if isinstance(c, dict) and isinstance(c.get("code"), str)
    )


def concept_text(concept: object) -> str:
    """`text`, else the codings' displays joined: what a person reads for this concept."""
    if not isinstance(concept, dict):
        return ""
    text = concept.get("text")
    if isinstance(text, str) and text:
        return text
    return " / ".join(c.display for c in codings(concept) if c.display)


class ConceptMemo(SizedMemo[object, T]):
    """Keeps answers computed from a CodeableConcept alone, keyed by the concept's JSON.

    A chart repeats a few dozen concepts (routine labs, everyday drugs) hundreds of times, so reading each once per
    process replaces per-resource Python with one `orjson.dumps` and a look-up (bench/README.md, "What was fixed").
    Concepts are untrusted input: what is kept is bounded in bytes (SizedMemo), and input that is not JSON-shaped
    (a Python caller's object) is computed every time.
    """

    __slots__ = ()

    def __init__(self, compute: Callable[[object], T], max_bytes: int = MAX_BYTES) -> None:
        super().__init__(compute, key=orjson.dumps, max_bytes=max_bytes)
