"""SizedMemo: answers kept within a byte budget, the oldest evicted first, huge entries never kept."""

from __future__ import annotations

import sys

from fhirsvc.memo import SizedMemo, approximate_size


class Upper:
    """A computation that records every text it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, text: str) -> str:
        self.asked.append(text)
        return text.upper()


def test_an_answer_is_computed_once_while_kept() -> None:
    compute = Upper()
    memo = SizedMemo(compute)
    assert memo("mg/dL") == memo("mg/dL") == "MG/DL"
    assert compute.asked == ["mg/dL"] and len(memo) == 1


def test_the_budget_counts_keys_and_answers_in_bytes() -> None:
    memo = SizedMemo(Upper(), max_bytes=100_000)
    memo("a" * 1_000)
    one = memo.kept_bytes
    assert one >= 2 * 1_000  # the 1,000-character key and its 1,000-character answer
    for n in range(200):
        memo(f"{n:04d}" + "a" * 996)
    assert memo.kept_bytes <= 100_000
    assert len(memo) == 100_000 // one  # as many entries of that size as the budget holds, no more


def test_the_oldest_answer_goes_first_and_is_computed_again() -> None:
    compute = Upper()
    memo = SizedMemo(compute, max_bytes=3_000)
    texts = [c * 300 for c in "abc"]
    for text in texts:
        memo(text)
    assert len(memo) == 3  # each entry is about 1,000 bytes: the budget is full
    memo("d" * 300)  # needs room: "a..." goes, the others stay
    assert len(memo) == 3
    asked = len(compute.asked)
    memo(texts[1])
    memo(texts[2])
    assert len(compute.asked) == asked
    memo(texts[0])
    assert compute.asked[-1] == texts[0]


def test_an_entry_over_the_entry_limit_is_computed_every_time() -> None:
    compute = Upper()
    memo = SizedMemo(compute, max_entry_bytes=10_000)
    big = "x" * 2_000_000
    assert memo(big) == big.upper() and memo(big) == big.upper()
    assert len(compute.asked) == 2 and len(memo) == 0 and memo.kept_bytes == 0


def test_an_argument_the_key_function_refuses_is_computed_and_not_kept() -> None:
    def refuse(text: str) -> str:
        raise TypeError("cannot key")

    compute = Upper()
    memo = SizedMemo(compute, key=refuse)
    assert memo("a") == memo("a") == "A"
    assert len(compute.asked) == 2 and len(memo) == 0


def test_approximate_size_counts_what_containers_hold() -> None:
    words = frozenset({"dolutegravir", "x" * 1_000})
    assert approximate_size(words) > sys.getsizeof(words) + 1_000
    assert approximate_size(("a" * 500, words)) > approximate_size(words) + 500
    assert approximate_size({"k": "v" * 300}) > 300
