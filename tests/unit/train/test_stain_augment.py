"""The stain recipe (augment.recipe: stain): photometric augmentation on the decoded field, before the
model's own preprocessing; the paper's recipe stays the default and has none."""
from __future__ import annotations

import numpy as np
import pytest

from alle_dist import config
from alle_dist.cli import get_args_parser
from alle_dist.testing import synthetic
from alle_dist.train import augment


def _field():
    return synthetic.draw_smear("Pre", np.random.default_rng(3), 96)


def test_the_paper_recipe_is_the_default_and_has_no_photometric_step():
    assert config.AugmentConfig().recipe == "paper"
    assert augment.photometric_transform(config.AugmentConfig()) is None


def test_the_stain_recipe_is_seeded_and_changes_colour_not_geometry():
    t = augment.photometric_transform(config.AugmentConfig(recipe="stain", blur_p=1.0))
    rgb = _field()
    a, b = augment.augment_image(rgb, t, 7), augment.augment_image(rgb, t, 7)
    c = augment.augment_image(rgb, t, 8)
    assert a.shape == rgb.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a.astype(int) - rgb).mean() > 1
    # colour, not place: the purple cell is where it was
    dark = lambda x: x.mean(axis=2) < 170  # noqa: E731
    assert (dark(a) == dark(rgb)).mean() > 0.9


def test_zero_strengths_give_the_field_back():
    cfg = config.AugmentConfig(recipe="stain", stain_scale=0, stain_shift=0, brightness=0, contrast=0, gamma=0, blur_p=0)
    rgb = _field()
    assert np.abs(augment.augment_image(rgb, augment.photometric_transform(cfg), 1).astype(int) - rgb).max() <= 1


def test_the_recipe_is_one_flag_or_yaml_key_and_is_checked(tmp_path):
    args = get_args_parser("train").parse_args(["--run-dir", "r", "--augment-recipe", "stain", "--stain-norm", "reinhard"])
    assert (args.augment_recipe, args.stain_norm) == ("stain", "reinhard")
    y = tmp_path / "c.yaml"
    y.write_text("augment:\n  recipe: stain\n  stain_scale: 0.3\n")
    assert config.job_config(str(y)).augment == config.AugmentConfig(recipe="stain", stain_scale=0.3)
    with pytest.raises(config.ConfigError, match="augment.recipe"):
        config.AugmentConfig(recipe="hed")


def test_the_stain_reference_is_fitted_on_a_seeded_sample_of_the_train_split(tmp_path):
    from pathlib import Path

    from alle_dist.io import storage
    from alle_dist.prepare.manifest import read_manifest
    from alle_dist.train import stage as train_stage
    from helpers_run import make_run

    src = synthetic.generate(str(tmp_path / "smears"), n_per_class=6, seed=0, size=64)
    table, source, _ = read_manifest(make_run(tmp_path / "run", Path(src), per_class=None))
    cfg = config.TrainConfig(stain_norm="reinhard", stain_fit_images=5)
    ref = train_stage.fit_stain(cfg, table, source)
    assert ref.method == "reinhard" and ref.fitted_on == 5 and ref == train_stage.fit_stain(cfg, table, source)
    train = set(train_stage.split_rows(table, "train", None, 0).column("path").to_pylist())
    picked = train_stage.split_rows(table, "train", 5, cfg.seed).column("path").to_pylist()
    assert set(picked) <= train and storage.exists(storage.join(source, picked[0]))
    assert train_stage.fit_stain(config.TrainConfig(), table, source) is None
