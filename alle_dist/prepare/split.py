"""The leakage-free split (pure): duplicate groups are whole units, stratified by class, seeded."""
from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np

from .. import schema


def dup_groups(rows: list[dict]) -> list[int]:
    """Per row: the id of its duplicate group (ok rows with equal sha256), -1 when unique."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r["status"] == schema.OK:
            by_hash[r["sha256"]].append(i)
    groups = [-1] * len(rows)
    # Numbered in path order of each group's first file, so ids are stable across runs.
    multi = sorted((idx for idx in by_hash.values() if len(idx) > 1), key=lambda idx: rows[idx[0]]["path"])
    for gid, idx in enumerate(multi):
        for i in idx:
            groups[i] = gid
    return groups


def _take_units(units: list[list[int]], target: int) -> tuple[list[int], list[list[int]]]:
    """Greedily take whole units (in the given order) while that brings the count closer to target."""
    taken: list[int] = []
    rest: list[list[int]] = []
    for u in units:
        if abs(len(taken) + len(u) - target) < abs(len(taken) - target):
            taken += u
        else:
            rest.append(u)
    return taken, rest


def assign_splits(rows: list[dict], groups: list[int], seed: int,
                  test_fraction: float, val_fraction: float) -> list[str | None]:
    """Stratified train / val / test per row (None for error rows).

    A duplicate group is one unit: all its files land in the same split (the class of its first
    file decides its stratum). Deterministic for a given seed and set of files.
    """
    units_by_class: dict[str, list[list[int]]] = defaultdict(list)
    seen: dict[int, list[int]] = {}
    for r in sorted(range(len(rows)), key=lambda j: rows[j]["path"]):
        if rows[r]["status"] != schema.OK:
            continue
        g = groups[r]
        if g >= 0 and g in seen:
            seen[g].append(r)
            continue
        unit = [r]
        if g >= 0:
            seen[g] = unit
        units_by_class[rows[r]["label"]].append(unit)
    split: list[str | None] = [None] * len(rows)
    for cls in sorted(units_by_class):
        # One generator per class: adding or removing a class doesn't reshuffle the others.
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        units = units_by_class[cls]
        units = [units[k] for k in rng.permutation(len(units))]
        n = sum(len(u) for u in units)
        test, rest = _take_units(units, round(n * test_fraction))
        n_train = n - len(test)
        val, rest = _take_units(rest, round(n_train * val_fraction))
        for name, idx in ((schema.TEST, test), (schema.VAL, val), (schema.TRAIN, [i for u in rest for i in u])):
            for i in idx:
                split[i] = name
    return split
