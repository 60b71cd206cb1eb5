"""The run directory: the one place that knows its layout (local path or s3:// prefix).

    RUN/manifest.parquet            prepare: the catalogue and the split
    RUN/manifests/<id>.parquet      a manifest that `prepare --reviews` replaced under trained models
    RUN/prepare_config.yaml
    RUN/models/<backbone>/          train: one ModelDir per backbone (see ModelDir)
    RUN/models/<backbone>__control-background/   train --control background (a shortcut control)
    RUN/ensemble.json               tune: weights, γ, temperatures, referral rule
    RUN/tune_config.yaml
    RUN/tune_training.json          tune --tune-training: the best training setting
    RUN/tune_training/trial-NNN/    one nested run directory per training trial
    RUN/report/                     evaluate: metrics.json, report.html, model_card.md, plots, corrections/
    RUN/report/stress.json          stress: the test split under graded shifts (+ stress_<shift>.png,
                                    stress_config.yaml; stress-images/ while it runs)

Stages ask a RunDir (or a ModelDir) for a URI; no other module spells one of these names.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import StorageError
from .io import storage


@dataclass(frozen=True)
class ModelDir:
    """RUN/models/<backbone>/ (also the layout of a training checkpoint folder)."""
    root: str

    WEIGHTS = "model.safetensors"
    META = "meta.json"
    OOD = "ood.safetensors"              # referral statistics fitted on the train split
    OPTIMIZER = "optimizer.safetensors"  # checkpoints only
    OVERSAMPLING = "oversampling.json"
    TRAIN_CONFIG = "train_config.yaml"
    LAST = "last"                        # the latest epoch's model (the folder itself holds the best)
    CHECKPOINTS = "checkpoints"

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    @property
    def weights(self) -> str:
        return self.file(self.WEIGHTS)

    @property
    def meta(self) -> str:
        return self.file(self.META)

    @property
    def ood(self) -> str:
        return self.file(self.OOD)

    def probs(self, split: str) -> str:
        """{train,val,test}_probs.parquet: the best model's outputs on one un-augmented split."""
        return self.file(f"{split}_probs.parquet")

    @property
    def last(self) -> "ModelDir":
        return ModelDir(self.file(self.LAST))

    @property
    def checkpoints(self) -> str:
        return self.file(self.CHECKPOINTS)

    def checkpoint_run(self, run_name: str) -> str:
        return storage.join(self.checkpoints, run_name)


@dataclass(frozen=True)
class RunDir:
    """RUN: every artifact of one prepared run."""
    root: str

    MANIFEST = "manifest.parquet"
    PREVIOUS_MANIFESTS = "manifests"
    ENSEMBLE = "ensemble.json"
    MODELS = "models"
    REPORT = "report"
    TUNE_TRAINING = "tune_training"
    CONTROL = "__control-"
    # Inside RUN/report/:
    METRICS = "metrics.json"
    REPORT_HTML = "report.html"
    COMPARISON = "comparison.md"
    MODEL_CARD = "model_card.md"         # also at the root of a model bundle (alle_dist.bundle)
    CORRECTIONS = "corrections"
    STRESS = "stress.json"
    STRESS_IMAGES = "stress-images"      # the shifted images while `stress` runs (removed after)

    def __post_init__(self):
        object.__setattr__(self, "root", str(self.root))

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    @property
    def manifest(self) -> str:
        return self.file(self.MANIFEST)

    def previous_manifest(self, manifest_id: str) -> str:
        """Where a replaced manifest is kept, named by (the start of) its identity."""
        return storage.join(self.root, self.PREVIOUS_MANIFESTS, f"{manifest_id[:16]}.parquet")

    @property
    def ensemble(self) -> str:
        return self.file(self.ENSEMBLE)

    def config(self, stage: str) -> str:
        """The resolved config a stage saved beside its outputs (evaluate's lives in the report)."""
        if stage in ("evaluate", "stress"):
            return self.report_file(f"{stage}_config.yaml")
        return self.file(f"{stage}_config.yaml")

    @property
    def models_root(self) -> str:
        return self.file(self.MODELS)

    def model(self, backbone: str) -> ModelDir:
        return ModelDir(storage.join(self.models_root, backbone))

    def model_folders(self) -> list[str]:
        """Every folder under RUN/models (finished or not: a checkpoint was made from this run too)."""
        import pyarrow.fs as pafs

        if not storage.exists(self.models_root):
            return []
        fs, base = storage.resolve(self.models_root)
        return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(base))
                      if i.type == pafs.FileType.Directory)

    def control_model(self, backbone: str, kind: str) -> ModelDir:
        """RUN/models/<backbone>__control-<kind>/: a shortcut control (train --control), never tuned on."""
        return self.model(f"{backbone}{self.CONTROL}{kind}")

    def trained_models(self) -> list[str]:
        """Backbones under RUN/models that have a test_probs.parquet (every finished one)."""
        if not storage.exists(self.models_root):
            return []
        done = "/" + ModelDir(".").probs("test").rsplit("/", 1)[-1]
        return sorted({rel.split("/")[0] for rel, _ in storage.list_files(self.models_root)
                       if rel.endswith(done) and rel.count("/") == 1})

    def check_ready(self, stage: str) -> None:
        """Before `stage` (train, tune, evaluate, export) starts its work: RUN exists and holds what the earlier
        stages wrote, else a StorageError naming the first step that is missing."""
        root = self.root
        if not storage.exists(root):
            raise StorageError(f"{root} does not exist; check --run-dir, or create it with "
                               f"`alle-dist prepare --data SRC --run-dir {root}`")
        if stage == "train" and not storage.exists(self.manifest):
            raise StorageError(f"no manifest in {root}: run `alle-dist prepare --data SRC --run-dir {root}` first")
        if stage in ("tune", "evaluate", "stress") and not self.trained_models():
            first = "train" if storage.exists(self.manifest) else "prepare --data SRC"
            raise StorageError(f"no trained models in {root}: run `alle-dist {first} --run-dir {root}` first")
        if stage in ("evaluate", "export", "stress") and not storage.exists(self.ensemble):
            raise StorageError(f"no {self.ENSEMBLE} in {root}: run `alle-dist tune --run-dir {root}` first")

    @property
    def report(self) -> str:
        return self.file(self.REPORT)

    def report_file(self, *parts: str) -> str:
        return storage.join(self.report, *parts)

    @property
    def stress(self) -> str:
        return self.report_file(self.STRESS)

    @staticmethod
    def stress_plot_name(shift: str) -> str:
        """The file name of one shift's plot in RUN/report/ (evaluate writes it too, beside its own)."""
        return f"stress_{shift}.png"

    def stress_plot(self, shift: str) -> str:
        return self.report_file(self.stress_plot_name(shift))

    def stress_images(self, shift: str) -> str:
        """Where `stress` writes one shift's images for the inference path to read (any node can)."""
        return self.report_file(self.STRESS_IMAGES, shift)

    @property
    def tune_training(self) -> str:
        return self.file(f"{self.TUNE_TRAINING}.json")

    def tune_trial(self, i: int) -> "RunDir":
        return RunDir(storage.join(self.root, self.TUNE_TRAINING, f"trial-{i:03d}"))
