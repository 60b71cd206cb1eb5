"""Perceptual near-duplicate groups: the hash, the multi-index search against brute force, the
combination with exact groups, and the groups on the shared images (docs/near-duplicates.md)."""
from __future__ import annotations

import csv
from itertools import combinations

import imagehash
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from alle_dist import schema
from alle_dist.io.images import decode_rgb, encode_jpeg
from alle_dist.prepare import split as catalog
from alle_dist.testing import synthetic
from alle_dist.constants import NEAR_RADIUS
from alle_dist.prepare import neardup

# ---------------------------------------------------------------- hash


def _smears(n_per_class: int) -> list[np.ndarray]:
    return [synthetic.draw_smear(c, np.random.default_rng([k, s]), 224)
            for k, c in enumerate(synthetic.CLASSES) for s in range(n_per_class)]


def test_hash_is_imagehash_phash_as_an_unsigned_int():
    img = _smears(1)[0]
    h = neardup.dct_hash(img)
    assert h == int(str(imagehash.phash(Image.fromarray(img))), 16)
    assert 0 <= h < 2 ** 64 and h >> 63 == 1   # bit 63 is the DC coefficient, always above the median


def test_jpeg_reencode_keeps_the_hash_and_different_smears_differ():
    imgs = _smears(3)
    hashes = [neardup.dct_hash(im) for im in imgs]
    reencoded = [neardup.dct_hash(decode_rgb(encode_jpeg(im, quality=80))) for im in imgs]
    assert reencoded[0] == hashes[0]
    # A coefficient next to the median may swap sides (2 bits); different smears are further apart.
    noise = max(neardup.hamming(a, b) for a, b in zip(hashes, reencoded))
    assert noise <= 2
    assert min(neardup.hamming(a, b) for a, b in combinations(hashes, 2)) > noise


def test_hash_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        neardup.dct_hash(np.zeros((8, 8), np.uint8))


def test_int64_round_trip_through_parquet_column():
    hashes = [0, 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, None]
    col = pa.array([neardup.to_int64(h) for h in hashes], pa.int64())
    assert [neardup.from_int64(s) for s in col.to_pylist()] == hashes


# ---------------------------------------------------------------- near_groups vs brute force


def _brute_groups(hashes: list[int | None], radius: int) -> list[int]:
    """Union-find over every pair: the reference near_groups must match."""
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in combinations(range(len(hashes)), 2):
        if hashes[i] is not None and hashes[j] is not None and (hashes[i] ^ hashes[j]).bit_count() <= radius:
            parent[root(j)] = root(i)
    roots = [root(i) for i in range(len(hashes))]
    sizes = {r: roots.count(r) for r in roots}
    ids: dict[int, int] = {}
    return [ids.setdefault(r, len(ids)) if sizes[r] > 1 else -1 for r in roots]


def _planted(rng: np.random.Generator, n: int, radius: int) -> list[int | None]:
    """Random hashes, a third of them with a planted partner 0..radius+2 bits away, some None."""
    hashes: list[int | None] = [int(x) for x in rng.integers(0, 2 ** 63, n, dtype=np.uint64) * 2]
    for i in rng.choice(n, n // 3, replace=False).tolist():
        bits = rng.choice(64, int(rng.integers(0, radius + 3)), replace=False)
        hashes.append(hashes[i] ^ sum(1 << int(b) for b in bits))
    for i in rng.choice(len(hashes), 5, replace=False).tolist():
        hashes[i] = None
    order = rng.permutation(len(hashes))
    return [hashes[k] for k in order]


@pytest.mark.parametrize("radius", [0, 4, 8])
def test_near_groups_equal_brute_force(radius):
    hashes = _planted(np.random.default_rng(radius), 300, radius)
    got = neardup.near_groups(hashes, radius)
    assert got == _brute_groups(hashes, radius)
    assert sum(g >= 0 for g in got) > 50   # the planted pairs within radius were found


@pytest.mark.parametrize("radius", [4, 8])
def test_every_block_plan_gives_the_same_groups(radius, monkeypatch):
    """The plan (blocks m, per-block radius q) only changes the speed, never the groups."""
    hashes = _planted(np.random.default_rng(10 + radius), 200, radius)
    want = _brute_groups(hashes, radius)
    for m in range(radius // 3 + 1, radius + 2):   # per-block radius q = radius // m: 2, 1 and 0
        monkeypatch.setattr(neardup, "_plan", lambda r, n, m=m: (m, r // m))
        assert neardup.near_groups(hashes, radius) == want, f"plan m={m}"


def test_joining_is_transitive_and_ids_follow_first_index():
    a = 0
    b = a ^ 0b1111            # 4 bits from a
    c = b ^ (0b1111 << 8)     # 4 bits from b, 8 from a
    lone = (1 << 64) - 1
    assert neardup.near_groups([lone, c, a, lone ^ 1, b], 4) == [0, 1, 1, 0, 1]


def test_none_never_joins_and_exact_copies_group_at_radius_zero():
    assert neardup.near_groups([None, None, 5, None, 5, 6], 0) == [-1, -1, 0, -1, 0, -1]
    assert neardup.near_groups([None, None], 3) == [-1, -1]
    assert neardup.near_groups([], 3) == []
    assert neardup.near_groups([7] * 1000, 2) == [0] * 1000


def test_bad_radius_and_signed_hashes_are_refused():
    with pytest.raises(ValueError, match="radius 64"):
        neardup.near_groups([1, 2], 64)
    with pytest.raises(ValueError, match="from_int64"):
        neardup.near_groups([1, -2], 2)


# ---------------------------------------------------------------- combine_groups


def test_combine_groups_units_and_reasons():
    # rows 0,1 byte-identical; 2,3 near; 4 alone; 5,6 byte-identical and 7 near to them.
    exact = [0, 0, -1, -1, -1, 1, 1, -1]
    near = [0, 0, 1, 1, -1, 2, 2, 2]
    unit, reason = neardup.combine_groups(exact, near)
    assert unit == [0, 0, 1, 1, -1, 2, 2, 2]
    assert reason == ["exact", "exact", "near", "near", None, "exact+near", "exact+near", "exact+near"]


def test_combine_groups_joins_across_kinds_transitively():
    # exact joins rows 0 and 3; near joins 0 and 2; so 0, 2, 3 are one unit.
    unit, reason = neardup.combine_groups([-1, 0, -1, -1, 0], [-1, 3, -1, 3, -1])
    assert unit == [-1, 0, -1, 0, 0]
    assert reason == [None, "exact+near", None, "exact+near", "exact+near"]


def test_combine_groups_checks_lengths():
    with pytest.raises(ValueError, match="one per row"):
        neardup.combine_groups([0, 0], [0])
    assert neardup.combine_groups([], []) == ([], [])


# ---------------------------------------------------------------- the shared images


@pytest.fixture(scope="module")
def shared(leukemia_dir):
    """Rows like catalog.check_file's (md5 for sha256), sorted by path, and their hashes."""
    with open(leukemia_dir / "MANIFEST.csv") as f:
        rows = sorted(({"path": r["path"], "label": r["label"], "sha256": r["md5"], "status": schema.OK}
                       for r in csv.DictReader(f)), key=lambda r: r["path"])
    hashes = [neardup.dct_hash(decode_rgb((leukemia_dir / r["path"]).read_bytes())) for r in rows]
    return rows, hashes


def test_shared_images_groups_at_the_chosen_radius(shared):
    rows, hashes = shared
    near = neardup.near_groups(hashes, NEAR_RADIUS)
    at = {r["path"].split("/")[-1]: near[i] for i, r in enumerate(rows)}
    assert at["WBC-Benign-381.jpg"] == at["WBC-Benign-384.jpg"] >= 0
    # Different fields 12 bits apart (one of them across classes) stay apart.
    assert at["WBC-Benign-500.jpg"] != at["WBC-Malignant-Pre-880.jpg"]
    assert at["WBC-Malignant-Pro-045.jpg"] == -1
    members: dict[int, list[int]] = {}
    for i, g in enumerate(near):
        if g >= 0:
            members.setdefault(g, []).append(i)
    # docs/near-duplicates.md: 83 groups (82 pairs, 1 triple), none mixing class folders.
    assert sorted(len(m) for m in members.values()) == [2] * 82 + [3]
    assert all(len({rows[i]["label"] for i in m}) == 1 for m in members.values())


def test_shared_images_no_group_straddles_a_split_after_combining(shared):
    rows, hashes = shared
    exact = catalog.dup_groups(rows)
    near = neardup.near_groups(hashes, NEAR_RADIUS)
    unit, reason = neardup.combine_groups(exact, near)

    def straddling(split):
        by: dict[int, set] = {}
        for g, s in zip(unit, split):
            if g >= 0:
                by.setdefault(g, set()).add(s)
        return sum(len(s) > 1 for s in by.values())

    assert straddling(catalog.assign_splits(rows, exact, 0, 0.35, 0.10)) == 28   # today's split
    assert straddling(catalog.assign_splits(rows, unit, 0, 0.35, 0.10)) == 0
    assert reason.count("exact") == 72 and reason.count("near") == 95 and "exact+near" not in reason
