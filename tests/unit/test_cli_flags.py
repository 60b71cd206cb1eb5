"""The command line: flags generated from the config dataclasses, typed YAML values, one-line errors
before Ray starts, and a --help that imports neither torch nor Ray nor pyarrow."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from alle_dist import config, fields
from alle_dist.cli import STAGES, get_args_parser, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "pyarrow", "timm", "numpy", "mlflow", "onnx", "onnxruntime")


def test_help_imports_no_torch_ray_or_pyarrow():
    code = ("import sys, contextlib, io\n"
            "from alle_dist.cli import STAGES, get_args_parser\n"
            "for argv in [['--help']] + [[s, '--help'] for s in STAGES]:\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        get_args_parser().parse_args(argv)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    print(f"--help of every stage in a fresh interpreter: {time.perf_counter() - t0:.2f} s")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "demo"])
def test_ray_jobs_entrypoint_has_the_same_flags(stage):
    src = (ROOT / "ray_jobs" / f"{stage}.py").read_text()
    assert f'get_args_parser("{stage}")' in src and f'run_stage("{stage}"' in src
    sub = get_args_parser()._subparsers._group_actions[0].choices[stage]
    assert {a.dest for a in get_args_parser(stage)._actions} == {a.dest for a in sub._actions}


def test_flags_are_generated_from_the_fields_with_types():
    args = get_args_parser("train").parse_args(
        ["--run-dir", "r", "--epochs", "3", "--lr", "1e-3", "--no-segmented", "--gpus-per-worker", "0.5"])
    assert fields.overrides(args, config.TrainConfig) == {"epochs": 3, "lr": 1e-3, "segmented": False,
                                                          "gpus_per_worker": 0.5}
    tune = get_args_parser("tune").parse_args(["--run-dir", "r", "--backbones", "a,b", "--seed", "4",
                                               "--backbone", "x"])
    assert fields.overrides(tune, config.TuneConfig) == {"backbones": ("a", "b"), "seed": 4}
    seg = get_args_parser("segment").parse_args(["--data", "d", "--output", "o", "--hsv-upper", "170,255,250"])
    assert fields.overrides(seg, config.SegmentConfig) == {"hsv_upper": (170, 255, 250)}


def test_every_flag_that_existed_before_still_parses():
    """The flag names tests/, docs/ and users call (grep'd when the flags were generated)."""
    cases = {
        "prepare": ["--data", "d", "--run-dir", "r", "--seed", "1", "--hash-workers", "2"],
        "segment": ["--data", "d", "--output", "o", "--hsv-lower", "1,2,3", "--hsv-upper", "4,5,6", "--tasks", "2"],
        "train": ["--run-dir", "r", "--backbone", "all", "--epochs", "1", "--batch-size", "8", "--lr", "0.1",
                  "--image-size", "64", "--workers", "2", "--gpus-per-worker", "1", "--pretrained", "none",
                  "--limit", "5", "--seed", "0", "--max-failures", "1", "--segmented", "--compile", "--retrain"],
        "tune": ["--run-dir", "r", "--backbones", "a,b", "--objective", "accuracy_on_accepted", "--min-coverage",
                 "0.9", "--num-samples", "3", "--seed", "1", "--tune-training", "--backbone", "x",
                 "--training-samples", "2"],
        "evaluate": ["--run-dir", "r", "--max-corrections-copied", "5"],
        "classify": ["--run-dir", "r", "--input", "i", "--output", "o", "--batch-size", "4", "--gpus", "0",
                     "--cpu-workers", "1", "--decode-tasks", "2", "--commit-rows", "10", "--trust-size"],
    }
    for stage, argv in cases.items():
        args = get_args_parser(stage).parse_args([*argv, "--config", "c.yaml", "--num-cpus", "2", "--log-level", "INFO"])
        assert args.config == "c.yaml" and args.num_cpus == 2
    assert get_args_parser("classify").parse_args(cases["classify"]).trust_size is True
    listed = ["--run-dir", "r", "--input-list", "l.csv", "--output", "o"]     # instead of --input, never both
    assert get_args_parser("classify").parse_args(listed).input_list == "l.csv"


def test_bad_flag_value_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--data", "d", "--output", "o", "--hsv-lower", "1,2"])
    assert exc.value.code == 2
    assert "give 3 comma-separated int values for segment.hsv_lower" in capsys.readouterr().err


def test_defaults_yaml_cli_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 4\n  lr: 1e-4\n  batch_size: 16\ntune:\n  backbones: densenet201,resnet50\n")
    args = get_args_parser("train").parse_args(["--run-dir", "r", "--epochs", "7"])
    job = config.job_config(str(cfg), train=fields.overrides(args, config.TrainConfig))
    assert (job.train.epochs, job.train.batch_size, job.train.lr, job.train.seed) == (7, 16, 1e-4, 0)
    assert job.tune.backbones == ("densenet201", "resnet50")


@pytest.fixture
def no_ray_running():
    """'Ray was not started' only means something when no Ray ran before (a full run's earlier
    integration tests leave the session's local Ray up)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.mark.parametrize("yaml_text, message", [
    ("train:\n  epochs: three\n", "train.epochs: 'three' is not an integer"),
    ("train:\n  lr: fast\n", "train.lr: 'fast' is not a number"),
    ("train:\n  segmented: maybe\n", "train.segmented: 'maybe' is not true or false"),
    ("segment:\n  hsv_lower: [1, 2]\n", "segment.hsv_lower: [1, 2] has 2 values; give 3"),
    ("train:\n  epochs: [1\n", "not valid YAML: expected ',' or ']'"),
    ("train:\n  epochs: 3\n   lr: 1\n", "not valid YAML: mapping values are not allowed here at line 3"),
    ("train: 3\n", "section `train:` must hold `key: value` lines"),
    ("trian:\n  epochs: 3\n", "unknown section(s) ['trian']"),
])
def test_bad_config_is_one_line_exit_2_before_ray(no_ray_running, tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    assert main(["train", "--run-dir", str(tmp_path), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alle-dist train: error: ") and message in err and "\n" not in err, err
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_missing_config_file(tmp_path, capsys):
    assert main(["evaluate", "--run-dir", str(tmp_path), "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in capsys.readouterr().err


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize("stage", ["train", "tune", "evaluate"])
def test_run_dir_that_does_not_exist(tmp_path, capsys, stage):
    run = tmp_path / "no-such-run"
    assert main([stage, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"alle-dist {stage}: error: {run} does not exist; check --run-dir, or create it with "
                   f"`alle-dist prepare --data SRC --run-dir {run}`")


def test_each_missing_artifact_names_the_stage_that_makes_it(tmp_path, capsys):
    from alle_dist.rundir import RunDir

    run = RunDir(str(tmp_path))
    assert main(["train", "--run-dir", run.root]) == 2
    assert "no manifest in" in capsys.readouterr().err
    _write(Path(run.manifest))
    for stage in ("tune", "evaluate"):   # prepared, nothing trained: train first, not tune
        assert main([stage, "--run-dir", run.root]) == 2
        assert f"no trained models in {run.root}: run `alle-dist train --run-dir {run.root}` first" in \
            capsys.readouterr().err
    _write(Path(run.model("resnet50").probs("test")))
    assert main(["evaluate", "--run-dir", run.root]) == 2
    assert f"no ensemble.json in {run.root}: run `alle-dist tune --run-dir {run.root}` first" in \
        capsys.readouterr().err


def test_train_sets_the_hsv_thresholds_its_models_record():
    args = get_args_parser().parse_args(["train", "--run-dir", "r", "--hsv-lower", "110,20,30"])
    job_cfg = config.job_config(None, train=fields.overrides(args, config.TrainConfig),
                                segment=fields.overrides(args, config.SegmentConfig))
    assert job_cfg.segment.hsv_lower == (110, 20, 30) and job_cfg.segment.hsv_upper == config.SegmentConfig().hsv_upper
