"""What a review batch holds: the audit sample's proportional allocation and seeded draw, the referred
order and limit (pure)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from alle_dist.review import select


def test_allocation_is_proportional_with_largest_remainders_and_never_more_than_a_class_holds():
    assert select.allocate({"A": 50, "B": 30, "C": 20}, 10) == {"A": 5, "B": 3, "C": 2}
    assert select.allocate({"A": 1, "B": 1, "C": 1}, 2) == {"A": 1, "B": 1, "C": 0}      # ties: class order
    assert select.allocate({"A": 70, "B": 29, "C": 1}, 10) == {"A": 7, "B": 3, "C": 0}
    assert select.allocate({"A": 3, "B": 2}, 10) == {"A": 3, "B": 2}                   # asked for more than there is
    for n in range(0, 30):
        got = select.allocate({"A": 13, "B": 7, "C": 5, "D": 1}, n)
        assert sum(got.values()) == min(n, 26) and all(got[c] <= k for c, k in {"A": 13, "B": 7, "C": 5, "D": 1}.items())


def test_the_draw_is_stratified_seeded_and_uniform_within_a_class():
    labels = ["A"] * 60 + ["B"] * 30 + ["C"] * 10
    first = select.draw_audit(labels, 20, seed=5)
    assert first == select.draw_audit(labels, 20, seed=5) != select.draw_audit(labels, 20, seed=6)
    assert len(set(first)) == 20 and Counter(labels[i] for i in first) == {"A": 12, "B": 6, "C": 2}
    hits = Counter(i for s in range(3000) for i in select.draw_audit(labels, 20, seed=s))
    a = np.array([hits[i] for i in range(60)]) / 3000          # each A row drawn with probability 12/60
    assert a.mean() == pytest.approx(0.2, abs=0.005) and a.min() > 0.15 and a.max() < 0.25


def test_referred_oldest_first_then_by_uri_at_most_limit():
    at = [3, 1, 2, 1]
    uris = ["d", "b", "c", "a"]
    assert select.referred_first(at, uris, None) == [3, 1, 2, 0]
    assert select.referred_first(at, uris, 2) == [3, 1] and select.referred_first(at, uris, 0) == []


def test_page_order_is_a_seeded_permutation():
    assert sorted(select.page_order(9, 1)) == list(range(9)) and select.page_order(9, 1) == select.page_order(9, 1)
