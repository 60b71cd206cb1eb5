"""The reader docs/classify.md documents, run as a user's cron job would run it: a fresh interpreter
each time, many times. deltalake's default `to_pyarrow_table()` aborted at interpreter exit in
about half of such runs here (exit 134, "terminate called without an active exception"); the
documented snippet must exit 0 every time."""
from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

DOC = Path(__file__).resolve().parents[3] / "docs" / "classify.md"
RUNS = 20


def documented_snippet() -> str:
    text = DOC.read_text()
    return re.search(r"<!-- reader snippet -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_the_documented_reader_exits_0_in_every_fresh_interpreter(tmp_path):
    dst = tmp_path / "results"
    for i in range(3):   # three commits, several files: a scan with more than one fragment
        write_deltalake(str(dst), pa.table({"uri": [f"file:///x/{i}/{k}.jpg" for k in range(500)]}), mode="append")
    code = documented_snippet().replace('"/data/results"', repr(str(dst)))
    assert code.count(repr(str(dst))) == 1

    def once(_):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(once, range(RUNS)))
    bad = [(r.returncode, r.stderr[-300:]) for r in results if r.returncode != 0]
    assert not bad, f"{len(bad)} of {RUNS} runs failed: {bad[:3]}"
    assert all(r.stdout.strip() == "1500" for r in results)
