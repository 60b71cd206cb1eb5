"""A half-written model attacked through every stage that reads it: model.safetensors cut short (a
copy interrupted, a full disk) must make train, tune, evaluate and classify refuse with one line
naming the file and the fix, where train used to say "already trained", and tune and evaluate
went on with exit 0."""
from __future__ import annotations

import numpy as np
import pytest

from alle_dist import cli
from alle_dist.rundir import RunDir
from helpers_probs import write_probs
from helpers_report import MEMBERS, gallery_run

pytestmark = pytest.mark.ray   # evaluate attaches to Ray before it reads the models


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    run = gallery_run(tmp_path_factory.mktemp("damaged"), n_test=8, n_train=8)
    val = [f"val_{i}.jpg" for i in range(8)]
    for b in MEMBERS:   # a finished backbone has validation outputs too
        write_probs(run, b, "val", val, np.arange(8) % 4, np.eye(4)[np.arange(8) % 4], meta=False)
    weights = RunDir(str(run)).model(MEMBERS[0]).file("model.safetensors")
    data = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])   # the attack
    return run, weights


@pytest.mark.parametrize("argv", [
    ["train", "--backbone", MEMBERS[0], "--pretrained", "none"],
    ["tune", "--backbones", ",".join(MEMBERS)],
    ["evaluate"],
    ["classify", "--input", "{src}", "--output", "{dst}"],
], ids=["train", "tune", "evaluate", "classify"])
def test_a_truncated_model_is_refused_by_every_stage(damaged, argv, ray_local, tmp_path, capsys):
    run, weights = damaged
    args = [a.format(src=run.parent / "src", dst=tmp_path / "dst") for a in argv]
    capsys.readouterr()
    assert cli.main([args[0], "--run-dir", str(run), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{weights}: sha256" in err and "does not match" in err and "cut short" in err
    assert "alle-dist train --retrain" in err and "restore the file" in err
