"""A model bundle: the one owner of its layout, its hash manifest and its checks (export writes, classify reads).

    BUNDLE/models/<backbone>/model.safetensors, meta.json, ood.safetensors   each member, bytes as trained
    BUNDLE/ensemble.json             byte-identical to the run's (classify's model_sha256 hashes it)
    BUNDLE/metadata.json             MONAI-bundle-like: version, changelog, classes, input, versions, hashes
    BUNDLE/model_card.md             the model card (Hugging Face style front matter + sections)
    BUNDLE/onnx/<backbone>.onnx      export --onnx only (for serving elsewhere; classify uses torch)
    BUNDLE/SHA256SUMS                `sha256sum` format: every other file's sha256, written last

A bundle is a verified subset of a run directory: `BundleDir.run` is a RunDir on the same root, so the
model checks (models.persistence) and the ensemble's lineage (ensemble.lineage, which accepts a run
directory that ships models + ensemble.json without their manifest) apply unchanged. `verify` refuses,
in one line, a bundle from a newer format, an incomplete one, and one whose files don't match
SHA256SUMS (changed, missing or added); `sha256sum -c SHA256SUMS` checks the same with standard tools.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .errors import ModelIntegrityError, StorageError
from .io import storage
from .rundir import RunDir

FORMAT_VERSION = 1   # bump when a reader of format N could misread the new layout


@dataclass(frozen=True)
class BundleDir:
    root: str

    METADATA = "metadata.json"
    MODEL_CARD = RunDir.MODEL_CARD
    HASHES = "SHA256SUMS"
    ONNX = "onnx"

    def __post_init__(self):
        object.__setattr__(self, "root", str(self.root).rstrip("/"))

    def file(self, name: str) -> str:
        return storage.join(self.root, name)

    @property
    def run(self) -> RunDir:
        """The run-directory subset inside the bundle: models/<backbone>/..., ensemble.json."""
        return RunDir(self.root)

    @property
    def metadata(self) -> str:
        return self.file(self.METADATA)

    @property
    def model_card(self) -> str:
        return self.file(self.MODEL_CARD)

    @property
    def hashes(self) -> str:
        return self.file(self.HASHES)

    def onnx(self, backbone: str) -> str:
        return storage.join(self.root, self.ONNX, f"{backbone}.onnx")

    def onnx_rel(self, backbone: str) -> str:
        return f"{self.ONNX}/{backbone}.onnx"

    @property
    def zip_path(self) -> str:
        return f"{self.root}.zip"

    def is_complete(self) -> bool:
        """SHA256SUMS is written last: without it the folder is an interrupted export."""
        return storage.exists(self.hashes)


def is_bundle_path(rel: str) -> bool:
    """Whether a relative path is one a bundle holds (an interrupted export may be replaced; other files never)."""
    top = rel.split("/", 1)[0]
    return top in (RunDir.MODELS, BundleDir.ONNX) or rel in (RunDir.ENSEMBLE, BundleDir.METADATA, BundleDir.MODEL_CARD)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(b: BundleDir) -> list[str]:
    """Every file under the bundle (relative, '/'-separated), SHA256SUMS itself left out."""
    return sorted(rel for rel, _ in storage.list_files(b.root) if rel != BundleDir.HASHES)


def write_hashes(b: BundleDir) -> str:
    """Write SHA256SUMS over every file now in the bundle; returns its own sha256 (the bundle's identity)."""
    lines = "".join(f"{sha256(storage.read_bytes(b.file(rel)))}  {rel}\n" for rel in _files(b))
    data = lines.encode()
    storage.write_bytes(b.hashes, data)
    return sha256(data)


def read_hashes(b: BundleDir) -> dict[str, str]:
    """{relative path: sha256} from SHA256SUMS; ModelIntegrityError when a line is malformed."""
    out = {}
    for i, line in enumerate(storage.read_bytes(b.hashes).decode("utf-8", "replace").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel or rel in out:
            raise ModelIntegrityError(f"{b.hashes}: line {i} is not `<sha256>  <file>` (or repeats a file); "
                                      "the bundle was edited: export it again or restore it")
        out[rel.lstrip("*")] = digest.lower()
    return out


def read_metadata(b: BundleDir) -> dict:
    try:
        doc = json.loads(storage.read_bytes(b.metadata))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(f"{b.metadata}: not valid JSON ({exc}); export the bundle again or restore it") from None
    if not isinstance(doc, dict):
        raise ModelIntegrityError(f"{b.metadata}: not a JSON object; export the bundle again or restore it")
    return doc


def check_format(b: BundleDir, doc: dict) -> None:
    """Refuse a bundle written by a newer, incompatible alle_dist (or one without a format)."""
    fmt = doc.get("bundle_format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ModelIntegrityError(f"{b.metadata}: no bundle_format; this is not an alle_dist bundle "
                                  "(or it was edited): export it again")
    if fmt > FORMAT_VERSION:
        raise StorageError(f"{b.root}: bundle format {fmt} is newer than this alle_dist reads (format "
                           f"{FORMAT_VERSION}); upgrade alle-dist (pip install -U alle-dist) to use it")


def verify(uri: str) -> BundleDir:
    """The bundle at `uri` after every check (format, completeness, every file's sha256, no file more or
    less than SHA256SUMS lists); one-line StorageError / ModelIntegrityError otherwise."""
    b = BundleDir(uri)
    if uri.endswith(".zip"):
        raise StorageError(f"{uri}: a zipped bundle; unzip it (`unzip {uri.rsplit('/', 1)[-1]}`) and pass the "
                           "folder it holds to --model")
    if not storage.exists(b.metadata):
        what = "does not exist" if not storage.exists(b.root) else f"has no {BundleDir.METADATA}"
        raise StorageError(f"{uri} {what}: not a model bundle; make one with "
                           "`alle-dist export --run-dir RUN --output BUNDLE`, or pass a run directory with --run-dir")
    check_format(b, read_metadata(b))
    if not b.is_complete():
        raise ModelIntegrityError(f"{uri}: no {BundleDir.HASHES} (an interrupted export); export it again")
    listed, present = read_hashes(b), _files(b)
    problems = ([f"{rel} changed" for rel in present if rel in listed
                 and sha256(storage.read_bytes(b.file(rel))) != listed[rel]]
                + [f"{rel} missing" for rel in sorted(set(listed) - set(present))]
                + [f"{rel} not listed" for rel in sorted(set(present) - set(listed))])
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelIntegrityError(f"{uri}: files don't match {BundleDir.HASHES}: {', '.join(problems[:3])}{more}; "
                                  "the bundle was changed after export: restore it or export it again")
    return b


def bundle_id(b: BundleDir) -> str:
    """The sha256 of SHA256SUMS: one number that pins every file of the bundle."""
    return sha256(storage.read_bytes(b.hashes))


def write_zip(b: BundleDir) -> str:
    """BUNDLE.zip beside the folder: every file under `<bundle name>/`, so `unzip` recreates the folder."""
    import io
    import zipfile

    name = b.root.rsplit("/", 1)[-1]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for rel in _files(b) + [BundleDir.HASHES]:
            z.writestr(f"{name}/{rel}", storage.read_bytes(b.file(rel)))
    storage.write_bytes(b.zip_path, buf.getvalue())
    return b.zip_path
