"""Listing at archive scale: throughput and driver memory of iterating every chunk of inputs.

    python bench/listing_scale.py                      # 200 000 small files in a temp folder
    python bench/listing_scale.py --files 50000 --old  # also today's storage.list_files, to compare
    python bench/listing_scale.py --input-list 1000000 # a synthesised Parquet + CSV list of URIs

Each measurement runs in a fresh child process, so its peak RSS (VmHWM, else getrusage) is the
listing's own, not the file creation's. Printed: inputs/s and peak RSS, absolute and above the
child's RSS after imports, per million inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
    """Peak RSS of this process in MB. Linux's getrusage ru_maxrss survives exec, so a child forked
    from a big parent would report the parent's size; VmHWM belongs to the new address space."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def measure(kind: str, path: str) -> dict:
    """In the child: iterate every chunk of one listing and report its cost."""
    from alle_dist.io import storage
    from alle_dist.classify import input_list, listing

    base = _rss_mb()
    t0 = time.perf_counter()
    if kind == "old":
        n = len(storage.list_files(path, listing.schema.IMAGE_SUFFIXES))
        first = None
    else:
        chunks = listing.list_inputs(path) if kind == "folder" else input_list.read_input_list(path)
        n, first = 0, None
        for i, table in enumerate(chunks):
            n += table.num_rows
            if i == 1:   # the consumer holds one chunk while the next is built: the steady state
                first = _rss_mb()
    return {"kind": kind, "inputs": n, "seconds": time.perf_counter() - t0,
            "rss_base_mb": base, "rss_two_chunks_mb": first, "rss_peak_mb": _rss_mb()}


def _child(kind: str, path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", kind, path], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def make_files(root: str, n: int, per_folder: int = 1000) -> None:
    for i in range(n):
        folder = os.path.join(root, f"batch{i // per_folder:05d}")
        if i % per_folder == 0:
            os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"smear_{i:08d}.jpg"), "wb") as f:
            f.write(b"\xff\xd8")


def make_lists(root: str, n: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    uris = pa.array([f"s3://archive/site{i % 7}/2024/{i // 1000:06d}/smear_{i:08d}.jpg" for i in range(n)])
    table = pa.table({"uri": uris, "size": pa.array(range(n), pa.int64())})
    pq.write_table(table, os.path.join(root, "inputs.parquet"), row_group_size=100_000)
    pcsv.write_csv(table, os.path.join(root, "inputs.csv"))
    return [os.path.join(root, "inputs.parquet"), os.path.join(root, "inputs.csv")]


def _report(r: dict, label: str) -> None:
    n = r["inputs"]
    print(f"{label:28s} {n:>9,d} inputs {n / r['seconds']:>10,.0f} inputs/s  "
          f"peak RSS {r['rss_peak_mb']:6.1f} MB"
          f" ({r['rss_peak_mb'] - r['rss_base_mb']:5.1f} MB above imports"
          f" = {(r['rss_peak_mb'] - r['rss_base_mb']) * 1e6 / max(n, 1):6.1f} MB per million inputs)")
    if r["rss_two_chunks_mb"]:
        # Reached once two chunks are out is the fixed cost (buffers, Arrow's pool, lazy imports);
        # what comes after is what would scale to 10 million inputs.
        grow = r["rss_peak_mb"] - r["rss_two_chunks_mb"]
        print(f"{'':28s} peak with two chunks out {r['rss_two_chunks_mb']:6.1f} MB; growth after it "
              f"{grow:5.1f} MB over the remaining inputs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200_000, help="small files to create and list")
    ap.add_argument("--input-list", type=int, default=0, help="URIs in a synthesised input list instead")
    ap.add_argument("--old", action="store_true", help="also time today's storage.list_files")
    ap.add_argument("--dir", help="create the files here and keep them (reused when it exists)")
    ap.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    root = args.dir or tempfile.mkdtemp(prefix="alle-listing-bench-")
    try:
        if args.input_list:
            for path in make_lists(root, args.input_list):
                _report(_child("list", path), f"input list {os.path.splitext(path)[1]}")
            return
        if not (args.dir and os.listdir(root)):
            t0 = time.perf_counter()
            make_files(root, args.files)
            print(f"created {args.files:,d} files in {time.perf_counter() - t0:.1f} s")
        _report(_child("folder", root), "list_inputs (folder)")
        if args.old:
            _report(_child("old", root), "storage.list_files (today)")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
