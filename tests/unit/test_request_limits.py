"""The request limits' pieces: counting resources, finding an overlong text, and the raw-bytes test before that walk."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.generate import patient_record, request_body
from fhirsvc.api.limits import may_hold_overlong_text, overlong_text, resource_count

# Quotes, backslashes, escapes and multi-byte characters: what could fool a test on raw bytes.
TEXT = st.text(alphabet=st.sampled_from(['"', "\\", "a", "é", "😀", "\n", "/", "u", " "]), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(document=JSON, max_chars=st.integers(min_value=1, max_value=24))
def test_the_raw_bytes_test_never_misses_an_overlong_text(document: Any, max_chars: int) -> None:
    body = orjson.dumps(document)
    if overlong_text(document, max_chars) is not None:
        assert may_hold_overlong_text(body, max_chars)


def test_an_ordinary_large_chart_is_cleared_without_the_walk() -> None:
    body = request_body(patient_record(1_000))
    assert not may_hold_overlong_text(body, 64 * 1024)
    assert overlong_text(orjson.loads(body), 64 * 1024) is None


def test_escaped_quotes_do_not_hide_a_long_text() -> None:
    document = {"note": [{"text": '\\"' * 100}]}
    assert overlong_text(document, 150) == "text"
    assert may_hold_overlong_text(orjson.dumps(document), 150)


def test_an_overlong_key_or_list_item_is_named() -> None:
    assert overlong_text({"x" * 10: 1}, 9) == "a key"
    assert overlong_text({"given": ["ok", "y" * 10]}, 9) == "given"
    assert overlong_text(["z" * 10], 9) == "[]"
    assert overlong_text({"a": {"b": ["short"]}}, 9) is None


def test_resources_are_counted_over_bundles_single_resources_and_draft_orders() -> None:
    bundle = {"resourceType": "Bundle", "entry": [{}, {}, {}]}
    prefetch = {"patient": {"resourceType": "Patient", "id": "p"}, "observations": bundle, "goals": None}
    assert resource_count(prefetch, {"draftOrders": bundle}) == 7
    assert resource_count(None, {}) == 0
