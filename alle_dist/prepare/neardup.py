"""Perceptual near-duplicate groups, so re-captured or re-encoded fields stay in one split.

`dct_hash` is imagehash's 64-bit DCT perceptual hash (pHash); `near_groups` joins hashes within a
Hamming radius (transitively); `combine_groups` merges those with the byte-identical groups of
catalog.dup_groups into one split unit per row. The radius and the groups found on the shared
images are in docs/near-duplicates.md (bench/near_duplicates.py reproduces them).
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from math import comb

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..constants import NEAR_RADIUS

# Chosen on the shared images (docs/near-duplicates.md): up to 10 bits, 48 of 49 pairs of distinct
# files are the same field re-captured; at 12 bits 11 of 14 are different fields (8 across classes).
# A missed re-capture leaks into the test split, a wrong join only moves a file, so the largest
# radius before that cliff.

HASH_BITS = 64
_SIGN = 1 << 63
# Candidate pairs checked at a time: ~70 B each in flight, so ~70 MB whatever the input.
_CHUNK = 1 << 20


def dct_hash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (imagehash.phash, 8x8) of a uint8 HxWx3 RGB image, in [0, 2**64).

    Bit 63 is the top-left (lowest-frequency) DCT coefficient, as in imagehash's hex string.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"dct_hash needs a uint8 HxWx3 RGB array, got {rgb.dtype} {rgb.shape}")
    bits = imagehash.phash(Image.fromarray(rgb, "RGB")).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def to_int64(h: int | None) -> int | None:
    """A hash as a signed int64 (two's complement), for an int64 Parquet column."""
    return None if h is None else h - (1 << 64) if h & _SIGN else h


def from_int64(s: int | None) -> int | None:
    """Inverse of to_int64: the unsigned hash in [0, 2**64)."""
    return None if s is None else s & ((1 << 64) - 1)


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def _plan(radius: int, n: int) -> tuple[int, int]:
    """(blocks m, per-block radius q = radius // m) with the least estimated work for n hashes.

    Work ~ m * probes per block * (1 + 0.07 * expected bucket size n / 2**width): one probe (two
    binary searches per hash) costs ~15x one candidate check, as measured on 10**5 hashes. The
    groups never depend on the plan, only the speed does.
    """
    def cost(m: int) -> float:
        probes = sum(comb(HASH_BITS // m, k) for k in range(radius // m + 1))
        return m * probes * (1 + 0.07 * n / 2 ** (HASH_BITS / m))
    m = min(range(1, min(radius + 1, HASH_BITS) + 1), key=cost)
    return m, radius // m


def _blocks(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m near-equal bit blocks covering all 64 bits."""
    edges = [round(k * HASH_BITS / m) for k in range(m + 1)]
    return [(lo, hi - lo) for lo, hi in zip(edges[:-1], edges[1:])]


def _flip_masks(width: int, q: int) -> list[int]:
    """Every width-bit mask with 1..q bits set."""
    return [sum(1 << b for b in bits) for k in range(1, q + 1) for bits in combinations(range(width), k)]


def _expand(items: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) item pairs: each items[k] with order[lo[k]:hi[k]], in chunks of ~_CHUNK pairs."""
    counts = np.maximum(hi - lo, 0)
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(_CHUNK, ends[-1] if len(ends) else 0, _CHUNK), side="right")
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(items)]):
        c = counts[a:b]
        if c.sum() == 0:
            continue
        starts = np.repeat(lo[a:b] - (np.cumsum(c) - c), c)
        yield np.repeat(items[a:b], c), order[starts + np.arange(c.sum())]


def _candidate_pairs(h: np.ndarray, radius: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) index pairs of distinct hashes h (unique values) that may lie within radius.

    Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): split the bits into m blocks; two
    hashes within radius differ in at most q = radius // m bits in at least one block (otherwise
    in >= m(q+1) > radius bits), so per block each hash is looked up at its own block value and at
    every value q or fewer bits away. m = radius + 1, q = 0 is the plain pigeonhole special case.
    """
    m, q = _plan(radius, len(h))
    idx = np.arange(len(h))
    for shift, width in _blocks(m):
        key = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        rank = np.empty_like(order)
        rank[order] = idx
        # Same block value: each pair once, from its first member in sorted order.
        yield from _expand(idx, rank + 1, np.searchsorted(sk, key, side="right"), order)
        for mask in _flip_masks(width, q):
            target = key ^ np.uint64(mask)
            up = idx[target > key]  # the other direction is found from the partner's side
            t = target[up]
            yield from _expand(up, np.searchsorted(sk, t, "left"), np.searchsorted(sk, t, "right"), order)


def _near_pairs(h: np.ndarray, radius: int) -> np.ndarray:
    """(k, 2) index pairs of h within Hamming distance radius (equal values chained, not all pairs)."""
    uniq, first, inv = np.unique(h, return_index=True, return_inverse=True)
    # Equal hashes: chain each to the first of its value, so 10**5 copies cost 10**5 edges, not 10**10.
    edges = [np.stack([first[inv], np.arange(len(h))], axis=1)]
    for rows, cols in _candidate_pairs(uniq, radius):
        ok = np.bitwise_count(uniq[rows] ^ uniq[cols]) <= radius
        edges.append(np.stack([first[rows[ok]], first[cols[ok]]], axis=1))
    return np.concatenate(edges)


def _components(n: int, edges: np.ndarray) -> list[int]:
    """Per item its component id, -1 when alone; ids in order of each component's smallest index."""
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp, minlength=n)
    out, ids = [-1] * n, {}
    for i, c in enumerate(comp.tolist()):   # ascending i: a component's first item numbers it
        if sizes[c] > 1:
            out[i] = ids.setdefault(c, len(ids))
    return out


def near_groups(hashes: list[int | None], radius: int) -> list[int]:
    """Per item the id of its near-duplicate group, -1 when alone.

    Items whose hashes are within Hamming distance <= radius are joined, transitively; None never
    joins. Group ids are numbered by each group's smallest index (stable for a given input order).
    """
    if not 0 <= radius < HASH_BITS:
        raise ValueError(f"radius {radius}: choose 0..{HASH_BITS - 1} (default {NEAR_RADIUS})")
    known = np.array([i for i, h in enumerate(hashes) if h is not None], np.int64)
    bad = next((hashes[i] for i in known.tolist() if not 0 <= hashes[i] < 1 << HASH_BITS), None)
    if bad is not None:
        raise ValueError(f"hash {bad} is outside [0, 2**64); convert signed int64 values with from_int64 first")
    h = np.array([hashes[i] for i in known.tolist()], np.uint64)
    edges = known[_near_pairs(h, radius)] if len(h) else np.empty((0, 2), np.int64)
    return _components(len(hashes), edges)


def _group_edges(groups: list[int]) -> np.ndarray:
    """Edges chaining the members of each group id >= 0."""
    g = np.asarray(groups, np.int64)
    order = np.argsort(g, kind="stable")
    same = (g[order][1:] == g[order][:-1]) & (g[order][1:] >= 0)
    return np.stack([order[:-1][same], order[1:][same]], axis=1)


def combine_groups(exact: list[int], near: list[int]) -> tuple[list[int], list[str | None]]:
    """One split unit id per row (-1 when alone) joining exact and near groups, and why per row.

    The reason is the same for every row of a unit: 'exact' (all byte-identical copies), 'near'
    (distinct files joined by perceptual hash only), 'exact+near' (both), None for a lone row.
    Unit ids are numbered by each unit's smallest row index.
    """
    if len(exact) != len(near):
        raise ValueError(f"combine_groups: {len(exact)} exact vs {len(near)} near group ids; pass one per row")
    n = len(exact)
    if n == 0:
        return [], []
    unit = _components(n, np.concatenate([_group_edges(exact), _group_edges(near), np.empty((0, 2), np.int64)]))
    # A unit needed a near link when it holds more than one distinct file (exact group or lone row).
    files: dict[int, set] = {}
    has_exact: dict[int, bool] = {}
    for i, (u, e) in enumerate(zip(unit, exact)):
        if u >= 0:
            files.setdefault(u, set()).add(("e", e) if e >= 0 else ("r", i))
            has_exact[u] = has_exact.get(u, False) or e >= 0
    reason = {u: "exact+near" if has_exact[u] and len(f) > 1 else "exact" if has_exact[u] else "near"
              for u, f in files.items()}
    return unit, [reason.get(u) for u in unit]
