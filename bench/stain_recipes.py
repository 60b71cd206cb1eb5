"""The paper's recipe vs stain augmentation vs stain normalisation, on one prepared split (issue 23).

    python bench/stain_recipes.py --data ../shared/data/leukemia --root runs/stain --recipe paper
    python bench/stain_recipes.py --root runs/stain --table          # the markdown table of every recipe

One recipe per call (run each through /work/bin/heavy on a shared machine); every step is skipped when
its output exists, so a call that was stopped resumes where it was. Per recipe, through the CLI a user
runs: the two members (`train`, same epochs, seeds and size for each recipe), the shortcut control
(`train --control background`), `tune`, `evaluate`, `stress` and `classify` over the other-lab images
(../shared/data/other-labs); then ROOT/<recipe>/summary.json with test accuracy and coverage, the stress
rows, the share of other-lab images referred per source and rule, and the control's accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"paper": [], "stain-augment": ["--augment-recipe", "stain"], "reinhard": ["--stain-norm", "reinhard"],
           "macenko": ["--stain-norm", "macenko"]}
OTHER_LABS = ROOT.parent / "shared" / "data" / "other-labs"


def cli(*args, log: Path) -> None:
    """One `alle-dist` stage, its output appended to the recipe's log."""
    cmd = [str(Path(sys.executable).parent / "alle-dist"), *map(str, args)]
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    print(f"{args[0]} ({time.time() - t0:.0f} s): exit {code}", flush=True)
    if code:
        sys.exit(f"{args[0]} failed; see {log}")


def run_recipe(a) -> dict:
    base, run = Path(a.root) / "base", Path(a.root) / a.recipe
    run.mkdir(parents=True, exist_ok=True)
    log = run / "bench.log"
    if not (base / "manifest.parquet").exists():
        cli("prepare", "--data", a.data, "--run-dir", base, "--seed", a.seed, "--num-cpus", a.num_cpus, log=log)
    if not (run / "manifest.parquet").exists():
        shutil.copy(base / "manifest.parquet", run / "manifest.parquet")
    common = ["--run-dir", run, "--epochs", a.epochs, "--image-size", a.image_size, "--pretrained", "none",
              "--seed", a.seed, "--lr", a.lr, "--num-cpus", a.num_cpus, *RECIPES[a.recipe]]
    common += ["--limit", a.limit] if a.limit else []
    for b in a.backbones.split(","):
        cli("train", "--backbone", b, *common, log=log)        # skips a finished backbone
    cli("train", "--backbone", a.backbones.split(",")[0], "--control", "background", *common, log=log)
    steps = [("ensemble.json", ["tune", "--run-dir", run, "--backbones", a.backbones]),
             ("report/metrics.json", ["evaluate", "--run-dir", run]),
             ("report/stress.json", ["stress", "--run-dir", run, "--limit", a.stress_limit])]
    for done, args in steps:
        if not (run / done).exists():
            cli(*args, "--num-cpus", a.num_cpus, log=log)
    for source in ("tecom", "cellavision"):
        if not (run / f"other-labs-{source}" / "_delta_log").exists():
            cli("classify", "--run-dir", run, "--input", OTHER_LABS / source, "--output", run / f"other-labs-{source}",
                "--num-cpus", a.num_cpus, log=log)
    summary = summarise(run)
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def other_lab_shares(table_dir: Path) -> dict:
    """Share of a classified folder referred, overall and per rule (an image can trip several)."""
    from deltalake import DeltaTable

    t = DeltaTable(str(table_dir)).to_pyarrow_table(columns=["status", "refer", "refer_reason"]).to_pylist()
    ok = [r for r in t if r["status"] == "ok"]
    rules: dict[str, int] = {}
    for r in ok:
        for reason in (r["refer_reason"] or "").split("+"):
            if reason:
                rules[reason] = rules.get(reason, 0) + 1
    return {"n": len(ok), "referred": sum(bool(r["refer"]) for r in ok) / max(len(ok), 1),
            "by_rule": {k: v / max(len(ok), 1) for k, v in sorted(rules.items())}}


def summarise(run: Path) -> dict:
    m = json.loads((run / "report" / "metrics.json").read_text())
    s = json.loads((run / "report" / "stress.json").read_text())
    worst = {}
    for r in s["rows"]:
        if r["shift"] not in worst or r["confident_error_rate"] > worst[r["shift"]]["confident_error_rate"]:
            worst[r["shift"]] = r
    members = {b: m["models"][b]["overall"]["accuracy"] for b in m["ensemble"]["backbones"]}
    return {"test_accuracy": m["overall"]["accuracy"], "coverage": m["coverage"], "n": m["n"],
            "accuracy_on_accepted": m["accuracy_on_accepted"], "members": members,
            "control_accuracy": (m.get("control") or {}).get("accuracy"),
            "stress": {"unshifted": s["unshifted"], "worst": worst, "verdict": s["verdict"], "broken": s["broken"],
                       "n": s["n"], "rows": s["rows"]},
            "other_labs": {src: other_lab_shares(run / f"other-labs-{src}") for src in ("tecom", "cellavision")}}


def table(root: Path) -> str:
    """The comparison as markdown, one column per recipe that has a summary."""
    sums = {r: json.loads((root / r / "summary.json").read_text()) for r in RECIPES if (root / r / "summary.json").exists()}
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    rows = [("test accuracy (referral = error)", lambda s: pct(s["test_accuracy"])),
            ("test coverage", lambda s: pct(s["coverage"])),
            ("accuracy on accepted", lambda s: pct(s["accuracy_on_accepted"])),
            ("members' accuracy", lambda s: " / ".join(pct(v) for v in s["members"].values())),
            ("shortcut control accuracy", lambda s: pct(s["control_accuracy"])),
            ("confident errors, unshifted", lambda s: pct(s["stress"]["unshifted"]["confident_error_rate"]))]
    shifts = next(iter(sums.values()))["stress"]["worst"] if sums else {}
    for sh in shifts:
        rows.append((f"confident errors, worst {sh}", lambda s, sh=sh: f"{pct(s['stress']['worst'][sh]['confident_error_rate'])}"
                     f" ({s['stress']['worst'][sh]['strength_label']}){' ✗' if sh in s['stress']['broken'] else ''}"))
    for src in ("tecom", "cellavision"):
        rows.append((f"other-lab referred: {src}", lambda s, src=src: pct(s["other_labs"][src]["referred"])))
    out = ["| | " + " | ".join(sums) + " |", "|---|" + "---|" * len(sums)]
    out += [f"| {name} | " + " | ".join(f(s) for s in sums.values()) + " |" for name, f in rows]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "leukemia"))
    p.add_argument("--root", default="runs/stain")
    p.add_argument("--recipe", choices=list(RECIPES))
    p.add_argument("--table", action="store_true", help="print the comparison of every finished recipe")
    p.add_argument("--backbones", default="test_resnet,test_efficientnet")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--lr", default="3e-3")
    p.add_argument("--limit", type=int, default=None, help="train.limit: at most N images per split")
    p.add_argument("--stress-limit", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=4)
    a = p.parse_args()
    if a.table:
        print(table(Path(a.root)))
        return 0
    if not a.recipe:
        p.error("give --recipe or --table")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    print(json.dumps(run_recipe(a))[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
