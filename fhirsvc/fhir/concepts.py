"""CodeableConcept reading (codings, "system|code" keys, text) and a memo for answers that depend on a concept alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import orjson

T = TypeVar("T")
_UNSEEN = object()


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


class ConceptMemo(Generic[T]):
    """Keeps answers computed from a CodeableConcept alone, keyed by the concept's JSON.

    A chart repeats a few dozen concepts (routine labs, everyday drugs) hundreds of times, so reading each once per
    process replaces per-resource Python with one `orjson.dumps` and a dict look-up (bench/README.md, "What was fixed").
    Bounded: concepts are untrusted input, so past `limit` distinct concepts new answers are computed, not kept.
    """

    __slots__ = ("_answers", "_compute", "_limit")

    def __init__(self, compute: Callable[[object], T], limit: int = 20_000) -> None:
        self._compute = compute
        self._answers: dict[bytes, T] = {}
        self._limit = limit

    def __call__(self, concept: object) -> T:
        try:
            key = orjson.dumps(concept)
        except TypeError:  # not JSON-shaped (a Python caller's object): nothing to key on
            return self._compute(concept)
        answers = self._answers
        answer = answers.get(key, _UNSEEN)
        if answer is not _UNSEEN:
            return cast(T, answer)
        answer = self._compute(concept)
        if len(answers) < self._limit:
            answers[key] = answer
        return answer

    def __len__(self) -> int:
        return len(self._answers)
