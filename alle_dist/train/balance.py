"""Random oversampling of the minority classes, recorded: the training split only, after splitting."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa


def oversample(rows: pa.Table, seed: int) -> tuple[pa.Table, dict]:
    """Randomly repeat minority-class rows until every class has the majority's count.

    Call it on the training split only (after splitting: no copy can reach val / test). Each
    minority class is repeated in whole passes plus a random subset without replacement, so no
    file is repeated more than once more than another of its class. Returns the balanced rows
    (originals first, then the repeats) and a JSON-able record of what was repeated.
    """
    rows = rows.sort_by("path")
    labels = rows.column("label").to_pylist()
    counts = Counter(labels)
    target = max(counts.values()) if counts else 0
    rng = np.random.default_rng(seed)
    extra: list[int] = []
    for cls in sorted(counts):
        idx = np.flatnonzero(np.asarray(labels, dtype=object) == cls)
        need = target - len(idx)
        whole, part = divmod(need, len(idx))
        extra += list(np.tile(idx, whole)) + sorted(rng.choice(idx, part, replace=False).tolist())
    balanced = pa.concat_tables([rows, rows.take(pa.array(extra, pa.int64()))]) if extra else rows
    paths = rows.column("path").to_pylist()
    repeated = Counter(paths[i] for i in extra)
    record = {
        "seed": int(seed),
        "counts_before": dict(sorted(counts.items())),
        "counts_after": dict(sorted(Counter(balanced.column("label").to_pylist()).items())),
        "repeated": dict(sorted(repeated.items())),   # path -> extra copies
    }
    return balanced, record


