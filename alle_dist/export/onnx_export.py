"""ONNX for serving elsewhere (Triton, MONAI Deploy, onnxruntime): each member with its normalisation
inside the graph, checked against the torch model on real images before it is written.

Graph input `image`: uint8 N × S × S × 3, the output of the one preprocessing path
(imaging.model_input.preprocess: HSV segmentation, resize to the member's S); outputs `probs` (softmax,
N × C), `logits` and `features` (the penultimate features the feature-distance referral uses). The
graph runs models.predictor.to_model_input, the same function bulk classification runs, so the
normalisation can't drift. The ensemble (weights, temperatures, γ, referral thresholds) stays in
ensemble.json: docs/bundles.md says how a server applies it. Classification in alle_dist keeps torch.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings

import numpy as np

from .. import schema
from ..errors import ConfigError, StorageError, UsageError
from ..io import storage
from ..rundir import RunDir

log = logging.getLogger("alle_dist.export")
EXTRA = "pip install 'alle-dist[onnx]'"
INPUT, OUTPUTS = "image", ("probs", "logits", "features")


def require() -> None:
    """One line naming the extra when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"export --onnx needs the onnx and onnxruntime packages ({exc.name} is missing): {EXTRA}, "
                          "or export without --onnx") from None


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _served(predictor):
    """The member as served: uint8 NHWC image → (probs, logits, features), normalisation included."""
    import torch

    from ..models.predictor import to_model_input

    class Served(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = predictor.model
            self.register_buffer("mean", predictor._mean.clone())
            self.register_buffer("std", predictor._std.clone())

        def forward(self, image):
            x = to_model_input(image, predictor.image_size, self.mean, self.std)
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            logits = self.model.get_classifier()(feats)
            return torch.softmax(logits, dim=1), logits, feats

    return Served().eval()


def to_onnx(predictor, opset: int) -> bytes:
    """The ONNX bytes of one member (TorchScript exporter, dynamic batch axis), checked by onnx.checker."""
    import onnx
    import torch

    s = predictor.image_size
    example = torch.zeros((2, s, s, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    axes = {INPUT: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}}
    with torch.inference_mode(), warnings.catch_warnings():
        # The spatial size is fixed by design (S × S, the member's input): the tracer's note on it is expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(_served(predictor), (example,), buf, input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def parity_uris(run: RunDir, parity_data: str | None, n: int) -> list[str]:
    """The first n images (sorted) of --parity-data, else of the run's test split (its manifest's source)."""
    from ..prepare.catalog import image_uri

    if parity_data:
        return [storage.join(parity_data, rel) for rel in storage.list_images(parity_data)[:n]]
    if not storage.exists(run.manifest):
        raise UsageError(f"{run.root}: no manifest to take parity images from; give --parity-data SRC "
                         "(a folder of real images)")
    from ..prepare.manifest import read_manifest

    table, source, _ = read_manifest(run)
    rows = sorted(p for p, s, st in zip(*(table.column(c).to_pylist() for c in ("path", "split", "status")))
                  if s == schema.TEST and st == schema.OK)
    return [image_uri(source, p) for p in rows[:n]]


def _inputs(uris: list[str], prep) -> np.ndarray:
    """uint8 N × S × S × 3 through imaging.model_input.from_bytes, the one read path, with the model's
    recorded preprocessing `prep` (models.preprocessing.Preprocessing)."""
    from ..imaging.model_input import from_bytes

    if not uris:
        raise UsageError("no images for the ONNX parity check; give --parity-data SRC (a folder of real images)")
    try:
        return np.stack([from_bytes(storage.read_bytes(u), prep.image_size, prep.segment, prep.working_size,
                                    stain=prep.stain).image for u in uris])
    except (OSError, ValueError) as exc:
        raise StorageError(f"ONNX parity images can't be read ({storage.first_line(exc)}); give --parity-data SRC") from None


def parity(predictor, data: bytes, images: np.ndarray) -> dict:
    """onnxruntime vs the torch Predictor (classify's path) on the same uint8 inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    p_onnx = session.run(["probs"], {INPUT: images})[0]
    p_torch = predictor(images)["probs"]
    return {"images": int(len(images)), "max_abs_diff": float(np.max(np.abs(p_onnx - p_torch))),
            "same_argmax": bool((p_onnx.argmax(1) == p_torch.argmax(1)).all())}


def export_member(model_dir: str, uri: str, rel: str, opset: int, uris: list[str], tolerance: float) -> dict:
    """Write one member's ONNX after its parity check; returns its metadata.json record."""
    from ..models import preprocessing
    from ..models.predictor import Predictor

    predictor = Predictor(model_dir)
    data = to_onnx(predictor, opset)
    prep = preprocessing.read(predictor.meta)
    check = parity(predictor, data, _inputs(uris, prep))
    log.info("%s: ONNX parity max |Δp| = %.3g over %d images", predictor.backbone, check["max_abs_diff"], check["images"])
    if check["max_abs_diff"] > tolerance:
        raise UsageError(f"{predictor.backbone}: the ONNX model's probabilities differ from torch's by "
                         f"{check['max_abs_diff']:.3g} > export.parity_tolerance={tolerance}; export without --onnx "
                         "or try another --onnx-opset")
    storage.write_bytes(uri, data)
    return {"file": rel, "sha256": hashlib.sha256(data).hexdigest(), "input": {INPUT: ["batch", prep.image_size,
            prep.image_size, 3]}, "outputs": list(OUTPUTS), "parity": {**check, "tolerance": tolerance}}
