"""Bulk classification at archive scale: driver memory of the real plan + commit path per million inputs.

    python bench/classify_scale.py                 # 1 000 000 inputs
    python bench/classify_scale.py --inputs 200000 --commit-rows 50000

The inputs are an --input-list (Parquet: uri + size) of N zero-byte files, so that every input is
fast-pathed in the driver as an "empty file (0 bytes)" error row: no Ray, no model, but the real
`alle-dist classify` path otherwise — read_input_list, planning each chunk against the table's index
(classify.planning), result rows, MERGE commits every --commit-rows rows (classify.commit), run records.

Two runs, each a fresh `alle-dist classify` child process (its VmHWM is its own peak RSS):
  1. into an empty table: N rows inserted;
  2. the same command again: an index of N rows, every input unchanged (skipped), nothing committed.
Printed per run: seconds, inputs/s, peak RSS, RSS after imports, and (peak - imports) per million.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # helpers_run.make_run_dir: the tests' real run directory

_CHILD = """
import json, os, sys, time
def hwm(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024
from alle_dist import cli
from alle_dist.classify import run, stage   # the imports a classify run does before any input
base = hwm("VmRSS:")
t0 = time.perf_counter()
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0, "rss_imports_mb": base,
                  "rss_peak_mb": hwm("VmHWM:")}), file=sys.stderr)
"""


def input_list(path: Path, n: int) -> None:
    """N URIs of zero-byte files under /archive (never created: their size says 0)."""
    with pq.ParquetWriter(path, pa.schema([("uri", pa.string()), ("size", pa.int64())])) as w:
        for start in range(0, n, 100_000):
            k = min(100_000, n - start)
            uris = [f"file:///archive/day{(start + i) // 10_000:04d}/smear_{start + i:09d}.jpg" for i in range(k)]
            w.write_table(pa.table({"uri": uris, "size": pa.array([0] * k, pa.int64())}))


def classify(run_dir: str, lst: Path, dst: str, commit_rows: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-c", _CHILD, "classify", "--run-dir", run_dir, "--input-list", str(lst),
           "--output", dst, "--commit-rows", str(commit_rows), "--commit-seconds", "3600"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"classify failed ({r.returncode}):\n{r.stderr[-3000:]}")
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    stats["stdout"] = r.stdout.strip()
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", type=int, default=1_000_000)
    p.add_argument("--commit-rows", type=int, default=50_000, help="rows per commit (the default of classify)")
    args = p.parse_args()
    from helpers_run import make_run_dir

    tmp = Path(tempfile.mkdtemp(prefix="clsscale-"))
    run_dir = str(make_run_dir(tmp / "run"))
    lst = tmp / "inputs.parquet"
    input_list(lst, args.inputs)
    per_m = 1e6 / args.inputs
    for name in ("first run (all new)", "rerun (all unchanged)"):
        s = classify(run_dir, lst, str(tmp / "dst"), args.commit_rows)
        print(json.dumps({"bench": "classify_scale", "run": name, "inputs": args.inputs,
                          "commit_rows": args.commit_rows, "seconds": round(s["seconds"], 1),
                          "inputs_per_s": round(args.inputs / s["seconds"]),
                          "rss_peak_mb": round(s["rss_peak_mb"]), "rss_after_imports_mb": round(s["rss_imports_mb"]),
                          "rss_above_imports_mb_per_million": round((s["rss_peak_mb"] - s["rss_imports_mb"]) * per_m),
                          "rss_peak_mb_per_million": round(s["rss_peak_mb"] * per_m),
                          "summary": s["stdout"]}), flush=True)


if __name__ == "__main__":
    main()
