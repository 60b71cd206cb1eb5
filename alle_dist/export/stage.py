"""Stage `export`: RUN's tuned ensemble → BUNDLE (alle_dist.bundle): each member's model files and
ensemble.json byte for byte, metadata.json, model_card.md, optionally ONNX, SHA256SUMS last.

Every model file is checked first exactly as classify checks it (classify.resolve: every sha256 and
the ensemble's lineage), so a bundle is never made from a damaged or stale run, and the bundle's
model_sha256 is the one classify will stamp on every row. No Ray: it is file work on the driver.
An existing complete bundle is never overwritten: the same models and version are a no-op, anything
else is refused (one folder per version). A folder an interrupted export left (no SHA256SUMS) is replaced.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .. import config, fields
from ..bundle import BundleDir, bundle_id, is_bundle_path, read_metadata, verify, write_hashes, write_zip
from ..errors import StorageError
from ..io import storage
from ..rundir import ModelDir, RunDir
from . import contents

log = logging.getLogger("alle_dist.export")


def export(run_dir: str, output: str, cfg: config.ExportConfig, parity_data: str | None = None) -> dict:
    """Write the bundle; returns its metadata.json document (plus "bundle_sha256")."""
    from ..classify.resolve import resolve_models
    from ..evaluate import card

    models = resolve_models(run_dir)           # every hash and the lineage, as classify checks them
    b = BundleDir(output)
    if _already(b, models.model_sha256, cfg.version):
        return {**read_metadata(b), "bundle_sha256": bundle_id(b), "unchanged": True}
    if cfg.onnx:
        from . import onnx_export
        onnx_export.require()                   # before anything is written
    run = RunDir(run_dir)
    members = {name: _copy_member(run.model(name), b.run.model(name), models.metas[name]) for name in models.spec.backbones}
    storage.write_bytes(b.run.ensemble, storage.read_bytes(run.ensemble))   # byte-identical: model_sha256 hashes it
    onnx = _onnx(run, b, models, cfg, parity_data) if cfg.onnx else None
    facts = card.gather(run_dir, models.model_sha256)
    name = b.root.rsplit("/", 1)[-1]
    doc = contents.metadata(name=name, cfg=cfg, classes=list(models.spec.classes), members=members,
                            ensemble=_ensemble_record(run, models.spec), model_sha256=models.model_sha256,
                            metrics=facts["metrics"], versions=_versions(), run_dir=run.root, onnx=onnx,
                            source=(facts["manifest"] or {}).get("source"))
    storage.write_json(b.metadata, doc)
    storage.write_bytes(b.model_card, card.render(facts, name, cfg.version, cfg.license).encode())
    doc["bundle_sha256"] = write_hashes(b)     # last: a bundle without it is an interrupted export
    verify(b.root)                              # what classify --model will check, checked now
    if cfg.zip:
        doc["zip"] = write_zip(b)
    return doc


def _already(b: BundleDir, model_sha256: str, version: str) -> bool:
    """True when `b` is a verified bundle of these models at this version; refuses any other content."""
    present = [rel for rel, _ in storage.list_files(b.root)] if storage.exists(b.root) else []
    if not present:
        return False
    if not b.is_complete():
        strangers = [rel for rel in present if not is_bundle_path(rel)]
        if strangers:
            raise StorageError(f"{b.root}: holds files that are not a bundle's ({', '.join(strangers[:3])}); "
                               "export into a new or empty folder")
        log.warning("%s: an incomplete bundle (an interrupted export, no %s): writing it again", b.root, b.HASHES)
        storage.delete(b.root)
        return False
    verify(b.root)
    doc = read_metadata(b)
    if doc.get("model_sha256") == model_sha256 and doc.get("version") == version:
        log.info("%s: already holds these models at version %s; nothing to do", b.root, version)
        return True
    raise StorageError(f"{b.root}: holds another bundle (version {doc.get('version')}, model_sha256 "
                       f"{str(doc.get('model_sha256'))[:12]}…); export each version into its own --output")


def _copy_member(src: ModelDir, dst: ModelDir, meta: dict) -> dict:
    """The member's files, byte for byte (their sha256 are in its meta.json, whose own hash is the model id)."""
    from ..models import persistence, preprocessing

    files = {meta.get("weights_file", ModelDir.WEIGHTS): meta["sha256"]}   # what meta.json records of each
    if meta.get("ood"):
        files[meta["ood"]["file"]] = meta["ood"]["sha256"]
    for name in (ModelDir.META, *files):
        storage.write_bytes(dst.file(name), storage.read_bytes(src.file(name)))
    rel = dst.root.rsplit("/", 2)
    return contents.member_record(meta, persistence.model_id(meta), preprocessing.read(meta),
                                  {f"{rel[-2]}/{rel[-1]}/{k}": v for k, v in files.items()})


def _ensemble_record(run: RunDir, spec) -> dict:
    from ..ensemble import lineage

    return {"file": RunDir.ENSEMBLE, "sha256": lineage.ensemble_sha256(run), "backbones": list(spec.backbones),
            "weights": list(spec.weights), "gamma": spec.gamma, "temperatures": list(spec.temperatures)}


def _versions() -> dict:
    from ..evaluate.report import versions

    return versions()


def _onnx(run: RunDir, b: BundleDir, models, cfg: config.ExportConfig, parity_data: str | None) -> dict:
    """Each member as ONNX under BUNDLE/onnx/, checked against the torch model on real images."""
    from . import onnx_export

    uris = onnx_export.parity_uris(run, parity_data, cfg.parity_images)
    out = {"opset": cfg.onnx_opset, "onnxruntime_version": onnx_export.runtime_version(), "members": {}}
    for name in models.spec.backbones:
        out["members"][name] = onnx_export.export_member(run.model(name).root, b.onnx(name), b.onnx_rel(name),
                                                         cfg.onnx_opset, uris, cfg.parity_tolerance)
    return out


def main(args: argparse.Namespace) -> int:
    job_cfg = config.job_config(args.config, export=fields.overrides(args, config.ExportConfig))
    RunDir(args.run_dir).check_ready("export")   # RUN and its ensemble.json, before anything is read
    doc = export(args.run_dir, args.output, job_cfg.export, args.parity_data)
    b = BundleDir(args.output)
    verb = "unchanged" if doc.get("unchanged") else "written"
    print(f"export: bundle {doc['name']!r} version {doc['version']} {verb} → {b.root} (bundle sha256 {doc['bundle_sha256']}, "
          f"model_sha256 {doc['model_sha256']})")
    for name, o in ((doc.get("onnx") or {}).get("members") or {}).items():
        print(f"export: onnx {name} opset {doc['onnx']['opset']}: max |p_onnx - p_torch| = "
              f"{o['parity']['max_abs_diff']:.3g} over {o['parity']['images']} images → {b.file(o['file'])}")
    if doc.get("zip"):
        print(f"export: zip → {doc['zip']}")
    print(f"export: model card → {b.model_card}", file=sys.stdout)
    return 0
