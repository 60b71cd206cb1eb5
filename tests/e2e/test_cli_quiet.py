"""What a user's terminal gets from a real stage at the default log level: alle_dist's own lines
(progress, the summary), no Ray INFO blocks, no Ray error lines, no advice to weaken security."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Ray's Python log format ("INFO file.py:12 -- ...") and its C++ one ("[date time,ms E pid tid] file.cc:1: ...").
RAY_PY = re.compile(r"\b(INFO|ERROR|DEBUG)\s+\S+\.py:\d+ --")
RAY_CC = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [IE] \d+ \d+\]", re.M)


@pytest.mark.slow
def test_prepare_at_the_default_level_prints_only_alle_dist_lines(tmp_path):
    from alle_dist.testing.synthetic import generate

    data = generate(str(tmp_path / "smears"), n_per_class=6, seed=0, size=64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_DATA_DISABLE", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "alle_dist.cli", "prepare", "--data", data, "--run-dir",
                           str(tmp_path / "run"), "--num-cpus", "2"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert not RAY_PY.search(err) and not RAY_CC.search(err), err
    assert "RAY_AUTH_MODE=disabled" not in err and "Progress bars disabled" not in err, err
    # stderr is a pipe: the progress is log lines (no bar), ending with the full count.
    assert re.search(r"prepare: reading \+ hashing: 24/24 img \(100%\)", err), err
    assert "24 files, 0 errors" in proc.stdout and "manifest: " in proc.stdout
