"""Real white-cell images from two other labs (../shared/data/other-labs: tecom, cellavision; normal
cells, other microscopes, cameras and stains) classified with a model trained on the shared images:
the default referral rules must refer them rather than label them.

The model: test_resnet + test_efficientnet at 64 px trained from scratch for 4 epochs on 120 real
images per class, tuned with the defaults; its in-distribution test coverage is asserted too, so a
rule that refers everything can't pass. Measured shares (docs/referral.md): see REFERRED.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from alle_dist import cli
from helpers_run import make_run

OTHER_LABS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "other-labs"
# The least share of each source the test holds referred (measured on this model: docs/referral.md).
REFERRED = {"tecom": 0.9, "cellavision": 0.9}
TRAIN = ["--pretrained", "none", "--image-size", "64", "--epochs", "4", "--lr", "3e-3", "--batch-size", "16",
         "--workers", "1"]


def _stage(name: str, *args) -> None:
    assert cli.run_stage(name, cli.get_args_parser(name).parse_args([str(a) for a in args])) == 0


def referred_share(table: str) -> tuple[float, int]:
    from deltalake import DeltaTable

    rows = DeltaTable(table).to_pyarrow_table(columns=["status", "refer"]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    return sum(bool(r["refer"]) for r in ok) / len(ok), len(ok)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1800)      # ~10 min on 2 busy cores: two trainings on 480 real images, three classify runs
def test_other_lab_white_cells_are_referred(tmp_path, leukemia_dir, ray_local):
    if not all((OTHER_LABS / s).is_dir() for s in REFERRED):
        pytest.skip(f"other-lab images not found at {OTHER_LABS}")
    run = make_run(tmp_path / "run", leukemia_dir, per_class=120)
    for b in ("test_resnet", "test_efficientnet"):
        _stage("train", "--run-dir", run, "--backbone", b, *TRAIN)
    _stage("tune", "--run-dir", run, "--backbones", "test_resnet,test_efficientnet", "--num-samples", "4",
           "--referral-rate", "none")   # ~320 calibration fields: too few for the 1 % guarantee's 299 + margin
    for source, least in REFERRED.items():
        out = tmp_path / f"classified-{source}"
        _stage("classify", "--run-dir", run, "--input", OTHER_LABS / source, "--output", out, "--batch-size", "32")
        share, n = referred_share(str(out))
        print(f"other-labs {source}: {share:.3f} of {n} referred")
        assert n == {"tecom": 300, "cellavision": 100}[source]
        assert share >= least, f"{source}: {share:.1%} of {n} referred, the test holds ≥ {least:.0%}"
    own = tmp_path / "classified-own"
    _stage("classify", "--run-dir", run, "--input", leukemia_dir / "Original" / "Pro", "--output", own,
           "--batch-size", "32")
    share, n = referred_share(str(own))
    print(f"own Pro fields: {share:.3f} of {n} referred")
    assert share <= 0.2, f"the shared images' own Pro fields: {share:.1%} of {n} referred"
