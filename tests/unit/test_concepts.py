"""CodeableConcept helpers and ConceptMemo: answers per distinct concept, bounded in bytes, right for odd input."""

from __future__ import annotations

from typing import Any

from fhirsvc.fhir.concepts import ConceptMemo, codes, concept_keys, concept_text

HEART_RATE = {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]}


class Counting:
    """A computation that records every concept it was asked about."""

    def __init__(self) -> None:
        self.asked: list[object] = []

    def __call__(self, concept: object) -> frozenset[str]:
        self.asked.append(concept)
        return concept_keys(concept)


def test_equal_concepts_are_computed_once_and_answered_alike() -> None:
    compute = Counting()
    memo = ConceptMemo(compute)
    first = memo(HEART_RATE)
    again = memo({"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]})
    assert first == again == frozenset({"http://loinc.org|8867-4"})
    assert len(compute.asked) == 1 and len(memo) == 1


def test_different_concepts_get_their_own_answers() -> None:
    memo = ConceptMemo(concept_keys)
    other = {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}
    assert memo(HEART_RATE) != memo(other)
    assert memo(other) == frozenset({"http://loinc.org|4548-4"})


def test_kept_answers_stay_within_the_byte_budget_and_evicted_ones_are_recomputed() -> None:
    compute = Counting()
    memo = ConceptMemo(compute, max_bytes=4_000)
    concepts = [{"coding": [{"system": "http://loinc.org", "code": f"{n}-0", "display": "x" * 200}]} for n in range(40)]
    for concept in concepts:
        memo(concept)
    assert 0 < len(memo) < len(concepts) and memo.kept_bytes <= 4_000
    memo(concepts[0])  # the first was evicted to make room: asked again
    assert len(compute.asked) == len(concepts) + 1


def test_a_huge_concept_is_answered_but_never_kept() -> None:
    compute = Counting()
    memo = ConceptMemo(compute)
    huge = {"text": "m" * 2_000_000}  # a 2 MB medication text
    memo(huge)
    memo(huge)
    assert len(compute.asked) == 2 and len(memo) == 0 and memo.kept_bytes == 0


def test_input_that_is_not_json_is_computed_every_time() -> None:
    compute = Counting()
    memo = ConceptMemo(compute)
    odd: dict[Any, Any] = {1: "a key orjson refuses"}
    assert memo(odd) == frozenset() and memo(odd) == frozenset()
    assert len(compute.asked) == 2 and len(memo) == 0


def test_malformed_concepts_read_as_empty() -> None:
    for concept in (None, 5, "text", {"coding": 5}, {"coding": [5, {"code": 7}]}):
        assert concept_keys(concept) == frozenset()
        assert codes(concept) == []
        assert concept_text(concept) == ""


def test_codes_keep_their_order_and_text_falls_back_to_displays() -> None:
    status = {"coding": [{"code": "relapse"}, {"system": "x", "code": "active"}]}
    assert codes(status) == ["relapse", "active"]
    assert concept_text(HEART_RATE) == "Heart rate"
    assert concept_text({"text": "HR", **HEART_RATE}) == "HR"
