"""Which Observations some enabled program reads (by code or code.text phrase): every other one is never parsed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhirsvc.fhir.concepts import ConceptMemo, concept_text


@dataclass(frozen=True)
class ObservationFilter:
    """The Observation codes (and code.text phrases) some program reads; every other Observation is skipped
    before any fact is built: most of a record is routine labs and vital signs no rule looks at."""

    keys: frozenset[str]
    text_patterns: tuple[str, ...] = ()
    _text: re.Pattern[str] | None = field(init=False, default=None, repr=False, compare=False)
    _decided: ConceptMemo[bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = "|".join(re.escape(p) for p in self.text_patterns)
        object.__setattr__(self, "_text", re.compile(pattern, re.IGNORECASE) if pattern else None)
        object.__setattr__(self, "_decided", ConceptMemo(self._wants_concept))

    def wants(self, resource: Mapping[str, Any]) -> bool:
        code = resource.get("code")
        return isinstance(code, dict) and self._decided(code)

    def reads(self, resource: Mapping[str, Any]) -> bool:
        """Whether the facts read a resource at all: any resource but an Observation no program wants."""
        return resource.get("resourceType") != "Observation" or self.wants(resource)

    def _wants_concept(self, code: object) -> bool:
        if not isinstance(code, dict):
            return False
        keys = self.keys
        found = code.get("coding")
        # Outside the per-resource guard of extract_facts: a malformed `coding` (a number) must not raise here.
        for coding in found if isinstance(found, list) else ():
            if isinstance(coding, dict) and f"{coding.get('system', '')}|{coding.get('code')}" in keys:
                return True
        return self._text is not None and self._text.search(concept_text(code)) is not None
