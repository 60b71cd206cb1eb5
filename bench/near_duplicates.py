"""Near-duplicate analysis of a labelled image folder: the numbers behind docs/near-duplicates.md.

    python bench/near_duplicates.py --data ../shared/data/leukemia [--radius 10] [--scan 16]

Reads DATA/MANIFEST.csv (path, label, md5), hashes every image with neardup.dct_hash and prints:
the bottom tail of the pairwise Hamming distances, split by whether each pair is the same field
(phase-correlation peak of the grey images >= --same-peak; different fields peak below ~0.15;
measured for every pair of distinct files within --scan bits: ~15 s at 16, ~4 min at 20);
per radius the same-field / different-field pairs it joins and the groups it forms; exact (md5)
duplicate groups; and how many groups straddle train/val/test under today's split (exact groups
only, catalog.assign_splits with seed 0, 0.35, 0.10) and after neardup.combine_groups (must be 0).
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alle_dist import schema  # noqa: E402
from alle_dist.constants import NEAR_RADIUS  # noqa: E402
from alle_dist.io.images import decode_rgb  # noqa: E402
from alle_dist.prepare import split as catalog  # noqa: E402
from alle_dist.prepare import neardup  # noqa: E402

TAIL = 20          # distances shown
RADII = (0, 2, 4, 6, 8, 10, 12, 14, 16)


def load(data: str) -> tuple[list[dict], list[np.ndarray]]:
    """Manifest rows shaped like catalog.check_file's (md5 stands in for sha256), sorted by path
    as catalog.manifest_table sorts them, and the decoded images."""
    with open(os.path.join(data, "MANIFEST.csv")) as f:
        rows = [{"path": r["path"], "label": r["label"], "sha256": r["md5"], "status": schema.OK}
                for r in csv.DictReader(f)]
    rows.sort(key=lambda r: r["path"])
    with ThreadPoolExecutor() as ex:
        imgs = list(ex.map(lambda r: decode_rgb(open(os.path.join(data, r["path"]), "rb").read()), rows))
    return rows, imgs


def pair_stats(imgs: list[np.ndarray], i: int, j: int) -> tuple[float, float]:
    """(mean absolute pixel difference /255 at a common 224x224 size, phase-correlation peak)."""
    a, b = (cv2.resize(imgs[k], (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) for k in (i, j))
    win = cv2.createHanningWindow((224, 224), cv2.CV_32F)
    _, peak = cv2.phaseCorrelate(a.mean(2), b.mean(2), win)
    return float(np.abs(a - b).mean()), float(peak)


def close_pairs(h: np.ndarray, rows: list[dict], imgs: list[np.ndarray], max_d: int) -> list[dict]:
    """Every pair of distinct files (different md5) within max_d, with its pixel statistics."""
    d = np.bitwise_count(h[:, None] ^ h[None, :])
    out = []
    for i, j in zip(*np.nonzero(np.triu(d <= max_d, 1))):
        if rows[i]["sha256"] != rows[j]["sha256"]:
            mad, peak = pair_stats(imgs, i, j)
            out.append({"d": int(d[i, j]), "a": rows[i]["path"], "b": rows[j]["path"], "mad": mad, "peak": peak,
                        "labels": (rows[i]["label"], rows[j]["label"])})
    return out


def random_peaks(imgs: list[np.ndarray], n: int, seed: int = 0) -> np.ndarray:
    """Phase-correlation peaks of random pairs: the different-field baseline."""
    rng = np.random.default_rng(seed)
    return np.array([pair_stats(imgs, *rng.choice(len(imgs), 2, replace=False))[1] for _ in range(n)])


def groups_summary(rows: list[dict], groups: list[int]) -> dict:
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        if g >= 0:
            members.setdefault(g, []).append(i)
    sizes = Counter(len(m) for m in members.values())
    mixed = [[rows[i]["path"] for i in m] for m in members.values() if len({rows[i]["label"] for i in m}) > 1]
    return {"groups": len(members), "files": sum(len(m) for m in members.values()),
            "sizes": dict(sorted(sizes.items())), "mixed_label": mixed}


def straddling(groups: list[int], split: list[str | None]) -> tuple[int, int]:
    """(groups in more than one split, groups in both train and test)."""
    by: dict[int, set] = {}
    for g, s in zip(groups, split):
        if g >= 0:
            by.setdefault(g, set()).add(s)
    return sum(len(s) > 1 for s in by.values()), sum({schema.TRAIN, schema.TEST} <= s for s in by.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with MANIFEST.csv and Original/<class>/*.jpg")
    p.add_argument("--radius", type=int, default=NEAR_RADIUS)
    p.add_argument("--scan", type=int, default=16, help="measure pixel statistics of pairs within this distance")
    p.add_argument("--same-peak", type=float, default=0.3, help="phase-correlation peak that counts as the same field")
    args = p.parse_args()

    rows, imgs = load(args.data)
    hashes = [neardup.dct_hash(im) for im in imgs]
    h = np.array(hashes, np.uint64)
    print(f"{len(rows)} images, {len(set(hashes))} distinct hashes")

    d = np.bitwise_count(h[:, None] ^ h[None, :])[np.triu_indices(len(h), 1)]
    pairs = close_pairs(h, rows, imgs, args.scan)
    base = random_peaks(imgs, 300)
    print(f"random pairs: phase-correlation peak max {base.max():.2f}, 99th pct {np.percentile(base, 99):.2f}")
    print(f"\n{'d':>3} {'all pairs':>10} {'distinct':>9} {'same field':>11} {'different':>10} {'MAD med':>8}")
    for k in range(TAIL + 1):
        ps = [q for q in pairs if q["d"] == k]
        line = f"{k:>3} {(d == k).sum():>10}"
        if ps:
            same = sum(q["peak"] >= args.same_peak for q in ps)
            line += f" {len(ps):>9} {same:>11} {len(ps) - same:>10} {np.median([q['mad'] for q in ps]):8.1f}"
        if (d == k).sum():
            print(line)

    exact = catalog.dup_groups(rows)
    split = catalog.assign_splits(rows, exact, 0, 0.35, 0.10)
    print(f"\n{'radius':>6} {'same joined':>12} {'diff joined':>12} {'groups':>7} {'files':>6} {'largest':>8} "
          f"{'mixed':>6} {'straddle':>9} {'train+test':>11}")
    for r in RADII:
        within = [q for q in pairs if q["d"] <= r]
        same = sum(q["peak"] >= args.same_peak for q in within)
        near = neardup.near_groups(hashes, r)
        s = groups_summary(rows, near)
        st = straddling(near, split)
        print(f"{r:>6} {same:>12} {len(within) - same:>12} {s['groups']:>7} {s['files']:>6} "
              f"{max(s['sizes'], default=0):>8} {len(s['mixed_label']):>6} {st[0]:>9} {st[1]:>11}")

    print(f"\npairs of distinct files within {args.radius + 2} bits (d, MAD/255, peak, files):")
    for q in sorted(pairs, key=lambda q: (q["d"], q["mad"])):
        if q["d"] <= args.radius + 2:
            tag = "same" if q["peak"] >= args.same_peak else "DIFFERENT"
            print(f"  {q['d']:>2} {q['mad']:5.1f} {q['peak']:5.2f} {tag:<9} {q['a']}  {q['b']}")

    near = neardup.near_groups(hashes, args.radius)
    unit, reason = neardup.combine_groups(exact, near)
    split_after = catalog.assign_splits(rows, unit, 0, 0.35, 0.10)
    ex, ng, un = groups_summary(rows, exact), groups_summary(rows, near), groups_summary(rows, unit)
    result = {
        "images": len(rows), "radius": args.radius,
        "exact_groups": ex["groups"], "exact_files": ex["files"], "exact_sizes": ex["sizes"],
        "exact_mixed_label": len(ex["mixed_label"]),
        "near_groups": ng["groups"], "near_files": ng["files"], "near_sizes": ng["sizes"],
        "near_mixed_label": ng["mixed_label"],
        "units": un["groups"], "unit_files": un["files"], "unit_reasons": dict(Counter(r for r in reason if r)),
        "near_straddle_before": straddling(near, split), "unit_straddle_before": straddling(unit, split),
        "unit_straddle_after": straddling(unit, split_after),
        "split_after": dict(Counter(split_after)),
    }
    print(f"\nexact (md5) groups {ex['groups']} ({ex['files']} files, sizes {ex['sizes']}, "
          f"{len(ex['mixed_label'])} with mixed labels)")
    print(f"near groups at radius {args.radius}: {ng['groups']} ({ng['files']} files, sizes {ng['sizes']}), "
          f"mixed labels: {ng['mixed_label'] or 'none'}")
    print(f"split units: {un['groups']} ({un['files']} files), reasons {result['unit_reasons']}")
    print(f"today's split (exact groups only): near groups straddling (any split, train+test) "
          f"{result['near_straddle_before']}, split units straddling {result['unit_straddle_before']}")
    print(f"after combine_groups: split units straddling {result['unit_straddle_after']}; "
          f"split sizes {result['split_after']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
