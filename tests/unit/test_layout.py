"""The package layout is the architecture: imports only point down the data flow, every
run-directory file name and every exception class has exactly one owner."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "alle_dist"
# Lower first: the foundation, the shared pieces, then the stages in the order data moves.
LAYERS = [("errors", "schema", "constants"), ("io",), ("fields",), ("config",), ("rundir", "tables", "runtime", "progress"),
          ("bundle", "tracking"), ("imaging",), ("models",), ("referral", "testing"), ("prepare",), ("segment",),
          ("train",), ("ensemble",), ("tune",), ("evaluate",), ("classify",), ("stress",), ("export",), ("review",),
          ("audit",), ("flags",), ("cli",), ("demo",)]
# The Hugging Face Hub names its weights file like ours: the registry asks the Hub for that file.
HUB_NAMES = {"model.safetensors": ("models/registry.py",)}
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        if parts != ("__init__",):
            yield path, parts


def _imported_tops(path: Path, parts: tuple[str, ...]) -> set[str]:
    """Top-level alle_dist units (e.g. 'models', 'io') this module imports, relative or absolute."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against the module's package
                base = list(parts[:-1])[: len(parts) - node.level] if node.level > 1 else list(parts[:-1])
                target = base + (node.module.split(".") if node.module else [])
                if not target:   # `from .. import x, y`: each name is a top-level unit
                    tops.update(a.name for a in node.names)
                else:
                    tops.add(target[0])
            elif node.module and node.module.startswith("alle_dist."):
                tops.add(node.module.split(".")[1])
    return tops


def test_every_unit_has_a_layer():
    tops = {parts[0] for _, parts in _modules()}
    assert tops <= set(RANK), f"give these a layer in LAYERS and docs/architecture.md: {tops - set(RANK)}"


def test_no_import_points_up_the_data_flow():
    upward = []
    for path, parts in _modules():
        own = parts[0]
        for top in _imported_tops(path, parts) - {own, "__version__"}:
            if top in RANK and RANK[top] >= RANK[own]:
                upward.append(f"{'/'.join(parts)}.py imports {top}")
    assert not upward, upward


def test_ray_jobs_are_wiring_only():
    for path in (PKG.parent / "ray_jobs").glob("*.py"):
        body = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert [n.name for n in body] == ["main"], f"{path.name}: only a main() that calls run_stage"


def test_run_directory_file_names_have_one_owner():
    from alle_dist.rundir import ModelDir, RunDir

    names = [RunDir.MANIFEST, RunDir.ENSEMBLE, RunDir.METRICS, RunDir.REPORT_HTML, ModelDir.META,
             ModelDir.WEIGHTS, ModelDir.OOD, ModelDir.OPTIMIZER, ModelDir.OVERSAMPLING, "_probs.parquet",
             RunDir.STRESS, RunDir.STRESS_IMAGES]
    for name in names:
        owners = [p.relative_to(PKG).as_posix() for p, _ in _modules() if f'"{name}' in p.read_text()
                  or f'{name}"' in p.read_text()]
        owners = [o for o in owners if o not in HUB_NAMES.get(name, ())]
        assert owners == ["rundir.py"], f"{name!r} is spelled in {owners}; ask rundir.RunDir/ModelDir instead"


def test_bundle_file_names_have_one_owner():
    from alle_dist.bundle import BundleDir

    for name in (BundleDir.METADATA, BundleDir.HASHES, BundleDir.MODEL_CARD):
        owners = [p.relative_to(PKG).as_posix() for p, _ in _modules() if f'"{name}"' in p.read_text()]
        assert len(owners) == 1 and owners[0] in ("bundle.py", "rundir.py"), f"{name!r} is spelled in {owners}"


def test_exception_classes_live_in_errors():
    owners = sorted(p.relative_to(PKG).as_posix() for p, _ in _modules()
                    if re.search(r"^class \w+\((\w+\.)?(\w*Error|Exception|\w*Incomplete)\b", p.read_text(), re.M))
    assert owners == ["errors.py"], owners


def test_every_stage_starts_at_its_stage_module():
    from alle_dist.cli import STAGES

    for name, (_, module) in STAGES.items():
        if name == "demo":       # every stage in a row, not a stage of its own
            continue
        pkg = module.split(".")[1]
        assert module == f"alle_dist.{pkg}.stage", f"{name}: its entry is {module}; put it at alle_dist/{pkg}/stage.py"
        body = ast.parse((PKG / pkg / "stage.py").read_text()).body
        assert "main" in {n.name for n in body if isinstance(n, ast.FunctionDef)}, f"{pkg}/stage.py has no main(args)"


def test_meta_json_is_read_only_through_the_checked_reader():
    # models.persistence.read_meta checks meta.json's own hash; a plain JSON read would trust an edited file.
    plain = re.compile(r"read_(?:json|bytes)\([^)]*(?:\.meta\b|META)")
    readers = sorted(p.relative_to(PKG).as_posix() for p, _ in _modules() if plain.search(p.read_text()))
    assert readers in ([], ["models/persistence.py"]), f"read meta.json with models.persistence.read_meta: {readers}"
