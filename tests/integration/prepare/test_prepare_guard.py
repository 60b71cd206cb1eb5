"""`alle-dist prepare` over a run that already has artifacts (issue 11): the same manifest is a no-op,
a different split under trained models is refused with one line, never a silent overwrite."""
from __future__ import annotations

import re

import pytest

from alle_dist.cli import get_args_parser, run_stage
from alle_dist.rundir import RunDir
from alle_dist.testing.synthetic import generate
from helpers_probs import write_model_meta


def _prepare(src, run, seed: int) -> int:
    return run_stage("prepare", get_args_parser("prepare").parse_args(
        ["--data", str(src), "--run-dir", str(run), "--seed", str(seed)]))


@pytest.mark.ray
def test_prepare_again_is_a_no_op_and_a_new_seed_under_models_is_refused(ray_local, tmp_path, capsys):
    src, run = generate(str(tmp_path / "src"), n_per_class=8, size=64), RunDir(str(tmp_path / "run"))
    assert _prepare(src, run.root, 0) == 0
    write_model_meta(run.root, "test_resnet")          # a model trained on this split
    before = open(run.manifest, "rb").read()
    capsys.readouterr()
    assert _prepare(src, run.root, 0) == 0
    assert "unchanged" in capsys.readouterr().out
    assert _prepare(src, run.root, 7) == 2
    *progress, err = capsys.readouterr().err.strip().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d prepare: ", line) for line in progress), progress   # no traceback
    assert err.startswith("alle-dist prepare: error:")
    assert "models/test_resnet were made from it; prepare into a new --run-dir" in err
    assert open(run.manifest, "rb").read() == before   # nothing overwritten
