"""What a review batch holds (pure): the referred images not yet reviewed for their current bytes,
and a blind audit sample of the accepted ones.

The audit sample is drawn without replacement, stratified by the label the ensemble gave, with
proportional allocation (largest remainder): each class gets its share of the sample, so the
pooled sample is (up to one image per class) a simple random sample of the accepted images and
each class's sample is exactly one of that class. Candidates are sorted by uri before the draw, so
the same table version and seed give the same sample.
"""
from __future__ import annotations

import numpy as np


def allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """n draws over strata of these sizes, proportionally; remainders to the largest fractions
    (ties: class order); never more than a stratum holds."""
    total = sum(counts.values())
    if total <= n:
        return dict(counts)
    exact = {c: n * k / total for c, k in counts.items()}
    out = {c: int(np.floor(v)) for c, v in exact.items()}
    order = sorted(counts, key=lambda c: (-(exact[c] - out[c]), c))
    for c in order[: n - sum(out.values())]:
        out[c] += 1
    return out


def draw_audit(labels: list[str], n: int, seed: int) -> list[int]:
    """Indices of a stratified draw of n rows (labels: the ensemble's label of each candidate, the
    candidates in a fixed order); sorted."""
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    take = allocate({c: len(v) for c, v in by_class.items()}, n)
    rng = np.random.default_rng(seed)
    picked = []
    for c in sorted(by_class):
        idx = by_class[c]
        picked += [idx[j] for j in rng.choice(len(idx), size=take[c], replace=False)]
    return sorted(picked)


def referred_first(classified_at: list, uris: list[str], limit: int | None) -> list[int]:
    """Indices of the referred rows to review, oldest classification first (then by uri), at most limit."""
    order = sorted(range(len(uris)), key=lambda i: (classified_at[i], uris[i]))
    return order if limit is None else order[:limit]


def page_order(n: int, seed: int) -> list[int]:
    """The order items appear in on the page: referred and audit images interleaved (seeded), so a
    reviewer's attention is spread evenly over both kinds."""
    return np.random.default_rng([seed, 1]).permutation(n).tolist()
