"""A model bundle (issue 21) without Ray: export from a real run directory (tiny timm models written
through the project's writers), the checks classify runs on it, and the attacks on it — a changed,
missing or added file, a newer format, an export over another bundle — each refused in one line."""
from __future__ import annotations

import json
import shutil

import pytest

from alle_dist import cli, config
from alle_dist.bundle import FORMAT_VERSION, BundleDir, verify
from alle_dist.classify import resolve
from alle_dist.errors import ModelIntegrityError, StorageError
from alle_dist.export import stage as export_stage
from alle_dist.rundir import RunDir
from helpers_run import make_run_dir, write_images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    run = make_run_dir(tmp / "run")
    doc = export_stage.export(str(run), str(tmp / "bundle"), config.ExportConfig(version="2.1.0", changelog="first"))
    return tmp, run, doc


def test_the_bundle_holds_what_classify_needs_and_the_same_model_hash(exported):
    tmp, run, doc = exported
    b = verify(str(tmp / "bundle"))
    files = sorted(p.relative_to(tmp / "bundle").as_posix() for p in (tmp / "bundle").rglob("*") if p.is_file())
    members = [f"models/{m}/{f}" for m in ("test_efficientnet", "test_resnet")
               for f in ("meta.json", "model.safetensors", "ood.safetensors")]
    assert files == sorted(["SHA256SUMS", "ensemble.json", "metadata.json", "model_card.md", *members])
    assert (tmp / "bundle" / "ensemble.json").read_bytes() == (run / "ensemble.json").read_bytes()
    assert resolve.resolve_models(resolve.model_root(None, b.root)).model_sha256 == \
        resolve.resolve_models(str(run)).model_sha256 == doc["model_sha256"]
    meta = json.loads((tmp / "bundle" / "metadata.json").read_text())
    assert meta["bundle_format"] == FORMAT_VERSION and meta["version"] == "2.1.0"
    assert meta["changelog"] == {"2.1.0": "first"} and meta["classes"] == ["Benign", "Early", "Pre", "Pro"]
    assert meta["members"]["test_resnet"]["preprocessing"]["image_size"] == 32
    assert meta["pytorch_version"] and meta["eval_metrics"] is None and meta["onnx"] is None


def test_sections_without_their_inputs_say_so(exported):
    tmp, _, _ = exported
    card = (tmp / "bundle" / "model_card.md").read_text()
    for missing in ("evaluate was not run", "no manifest in this run or bundle", "no stress results"):
        assert f"_Not available: {missing}" in card, missing
    assert "## Not a medical device" in card and "version 2.1.0" in card


@pytest.mark.parametrize("attack, message", [
    ("change", r"files don't match SHA256SUMS: models/test_resnet/model.safetensors changed"),
    ("remove", r"files don't match SHA256SUMS: models/test_resnet/ood.safetensors missing"),
    ("add", r"files don't match SHA256SUMS: models/extra.json not listed"),
    ("newer", rf"bundle format {FORMAT_VERSION + 1} is newer than this alle_dist reads.*upgrade"),
    ("incomplete", r"no SHA256SUMS \(an interrupted export\)"),
])
def test_classify_refuses_a_tampered_bundle_in_one_line(exported, tmp_path, capsys, attack, message):
    tmp, _, _ = exported
    b = tmp_path / "b"
    shutil.copytree(tmp / "bundle", b)
    if attack == "change":
        weights = b / "models" / "test_resnet" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    elif attack == "remove":
        (b / "models" / "test_resnet" / "ood.safetensors").unlink()
    elif attack == "add":
        (b / "models" / "extra.json").write_text("{}")
    elif attack == "newer":
        meta = json.loads((b / "metadata.json").read_text())
        (b / "metadata.json").write_text(json.dumps({**meta, "bundle_format": FORMAT_VERSION + 1}))
    else:
        (b / "SHA256SUMS").unlink()
    write_images(tmp_path / "in", 2)
    code = cli.main(["classify", "--model", str(b), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert pytest.importorskip("re").search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_export_is_a_no_op_on_the_same_bundle_and_refuses_another(exported, tmp_path):
    tmp, run, doc = exported
    again = export_stage.export(str(run), str(tmp / "bundle"), config.ExportConfig(version="2.1.0"))
    assert again["unchanged"] and again["bundle_sha256"] == doc["bundle_sha256"]
    with pytest.raises(StorageError, match=r"holds another bundle \(version 2.1.0.*its own --output"):
        export_stage.export(str(run), str(tmp / "bundle"), config.ExportConfig(version="2.2.0"))
    partial = tmp_path / "partial"
    (partial / "models").mkdir(parents=True)
    (partial / "models" / "junk").write_text("left by an interrupted export")
    export_stage.export(str(run), str(partial), config.ExportConfig())
    assert verify(str(partial)) and not (partial / "models" / "junk").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(StorageError, match=r"holds files that are not a bundle's \(notes.txt\)"):
        export_stage.export(str(run), str(mine), config.ExportConfig())
    assert (mine / "notes.txt").read_text() == "a user's file"


def test_a_zip_unpacks_to_the_same_verified_bundle(exported, tmp_path):
    import zipfile

    tmp, run, _ = exported
    doc = export_stage.export(str(run), str(tmp_path / "zipped"), config.ExportConfig(zip=True))
    with zipfile.ZipFile(doc["zip"]) as z:
        z.extractall(tmp_path / "unzipped")
    assert verify(str(tmp_path / "unzipped" / "zipped")).root.endswith("zipped")
    with pytest.raises(StorageError, match="a zipped bundle; unzip it"):
        verify(doc["zip"])


def test_a_model_changed_behind_the_bundle_hashes_is_still_caught_by_the_model_checks(exported, tmp_path):
    """SHA256SUMS rewritten by an attacker to match an edited meta.json: the model's own hash still refuses it."""
    from alle_dist.bundle import write_hashes

    tmp, _, _ = exported
    b = tmp_path / "b"
    shutil.copytree(tmp / "bundle", b)
    meta_file = b / "models" / "test_resnet" / "meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "std": [9.0, 9.0, 9.0]}))
    write_hashes(BundleDir(str(b)))
    with pytest.raises(ModelIntegrityError, match="edited after it was written"):
        resolve.resolve_models(resolve.model_root(None, str(b)))


def test_export_refuses_a_run_without_an_ensemble(tmp_path, capsys):
    (tmp_path / "run" / "models").mkdir(parents=True)
    code = cli.main(["export", "--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "b")])
    assert code == 2 and "no ensemble.json in" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and RunDir(str(tmp_path / "run"))


def test_onnx_without_its_packages_is_one_line_naming_the_extra(exported, tmp_path, capsys, monkeypatch):
    import sys

    tmp, run, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code = cli.main(["export", "--run-dir", str(run), "--output", str(tmp_path / "b"), "--onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'alle-dist[onnx]'" in err[0], err
    assert not (tmp_path / "b").exists()


def test_onnx_members_match_torch_on_real_images(tmp_path, leukemia_dir, capsys):
    """export --onnx --parity-data: tiny members at 64 px, four real images through the one preprocessing
    path; onnxruntime's probabilities within 1e-5 of the torch Predictor's, opset recorded."""
    pytest.importorskip("onnxruntime")
    import re

    run = make_run_dir(tmp_path / "run", image_size=64)
    code = cli.main(["export", "--run-dir", str(run), "--output", str(tmp_path / "b"), "--onnx",
                     "--parity-data", str(leukemia_dir / "Original"), "--parity-images", "4"])
    printed = capsys.readouterr().out
    diffs = [float(x) for x in re.findall(r"max \|p_onnx - p_torch\| = (\S+) over 4 images", printed)]
    assert code == 0 and len(diffs) == 2 and max(diffs) < 1e-5, printed
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["onnx"]["opset"] == 17 and meta["onnx"]["members"]["test_resnet"]["parity"]["same_argmax"]
    assert verify(str(tmp_path / "b")) and (tmp_path / "b" / "onnx" / "test_efficientnet.onnx").is_file()
