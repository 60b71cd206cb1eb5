"""tune's guarantees through the command line: an (α, confidence) the calibration set is too small for
stops before Ray with one line naming n_required; a feasible one puts the conformal threshold, the
calibration sizes and the bounds in ensemble.json, and --selective-risk sets γ by SGR."""
from __future__ import annotations

import pytest
from alle_dist.cli import get_args_parser, run_stage
from alle_dist.ensemble import split_probs
from alle_dist.ensemble import weighted
from alle_dist.evaluate import metrics as EV
from alle_dist.io import storage
from alle_dist.referral import bounds

from helpers_probs import BACKBONES
from test_tune import _write_case


def _args(run_dir, *extra):
    return get_args_parser("tune").parse_args(["--run-dir", str(run_dir), "--num-samples", "2", *map(str, extra)])


def test_too_strict_a_referral_rate_is_one_line_before_ray(tmp_path, capsys):
    _write_case(tmp_path)                                  # 59 validation images, no out-of-fold scores
    assert run_stage("tune", _args(tmp_path, "--referral-rate", "0.01", "--confidence", "0.95")) == 2
    err = capsys.readouterr().err.strip()
    assert "n_required=299" in err and "59 validation + 0 out-of-fold" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ensemble.json").exists()
    args = _args(tmp_path, "--backbones", "resnet50,resnet50__control-background")
    assert run_stage("tune", args) == 2 and "never ensemble members" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
def test_guarantees_recorded_and_gamma_by_sgr(ray_local, tmp_path):
    y, image = _write_case(tmp_path)
    args = _args(tmp_path, "--referral-rate", "0.05", "--confidence", "0.9", "--selective-risk", "0.25")
    assert run_stage("tune", args) == 0
    doc = storage.read_json(str(tmp_path / "ensemble.json"))
    g = doc["guarantees"]
    fit = bounds.conformal_threshold(image, 0.05, 0.1)
    assert g["alpha"] == 0.05 and g["delta"] == pytest.approx(0.1)
    assert g["image_rule"]["n_val"] == 59 and g["image_rule"]["n_oof"] == 0 and g["image_rule"]["k"] == fit["k"]
    assert doc["referral"]["image_score"] == pytest.approx(fit["threshold"], rel=1e-6)
    assert g["whole_rule_validation"]["n"] == 59 and "optimistic" in g["whole_rule_validation"]["note"]
    sgr = g["gamma_rule"]["sgr"]
    assert g["gamma_rule"]["set_by"] == "sgr" and sgr["feasible"] and sgr["risk_bound"] < 0.25
    spec = weighted.load_spec(str(tmp_path))
    assert spec.gamma == pytest.approx(sgr["threshold"]) and doc["selected"]["source"].endswith("+sgr")
    # evaluate checks those bounds on a test split (here: the validation files again, as a stand-in)
    data = split_probs.load_probs(str(tmp_path), list(BACKBONES), "val")
    rows = EV.guarantee_rows(data, spec, g)
    assert [r["basis"] for r in rows][::2] == ["conformal, calibration-conditional", "SGR"]
    assert rows[2]["bound"] == sgr["risk_bound"]


def _write_lab(run_dir, n: int = 200):
    """A small lab's validation files: n labelled images, image scores for every one, no out-of-fold."""
    import numpy as np

    from helpers_probs import write_probs

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, n)
    paths = [f"{['Benign', 'Early', 'Pre', 'Pro'][c]}/lab{i}.jpg" for i, c in enumerate(y)]
    image = rng.chisquare(20, n)
    for b in BACKBONES:
        p = rng.dirichlet(np.ones(4), n) + 2.0 * np.eye(4)[y]
        write_probs(run_dir, b, "val", paths, y, p / p.sum(1, keepdims=True), image=image)
        storage.write_bytes(str(run_dir / "models" / b / "test_probs.parquet"), b"not parquet")   # never read


@pytest.mark.ray
def test_a_small_lab_gets_a_working_default_with_an_honest_referral_rate(ray_local, tmp_path, capsys):
    _write_lab(tmp_path, 200)                              # 200 calibration images: 0.01 at 95 % needs 299
    assert run_stage("tune", _args(tmp_path)) == 0         # the defaults
    out = capsys.readouterr().out
    said = ("tune: the default referral rate 0.01 needs 299 calibration images at confidence 0.95; this run has "
            "200, so the image rule guarantees the smallest rate they support, 0.015 (--referral-rate sets it)")
    assert said in out.splitlines()
    g = storage.read_json(str(tmp_path / "ensemble.json"))["guarantees"]
    assert g["alpha"] == 0.015 and g["alpha_chosen"] == said[len("tune: "):]
    assert g["image_rule"]["alpha"] == 0.015 and g["image_rule"]["alpha_bound"] <= 0.015 and g["image_rule"]["n_val"] == 200
    # An α given explicitly is never replaced: infeasible, it fails and says what this set could guarantee.
    assert run_stage("tune", _args(tmp_path, "--referral-rate", "0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_required=299" in err and "could guarantee --referral-rate 0.015" in err
    (tmp_path / "cfg.yaml").write_text("tune:\n  referral_rate: 0.01\n")
    assert run_stage("tune", _args(tmp_path, "--config", tmp_path / "cfg.yaml")) == 2
    assert "could guarantee --referral-rate 0.015" in capsys.readouterr().err
