"""What the stress stage reports per condition (pure): coverage, accuracy on accepted images and the
confident-error rate (accepted and wrong, over all images), each shift against the unshifted split."""
from __future__ import annotations

import numpy as np

from ..ensemble.weighted import accepted_metrics

GOAL_FACTOR = 2.0     # the confident-error rate under a shift stays ≤ this × the unshifted one


def outcome(y: np.ndarray, label: np.ndarray) -> dict:
    """One condition from the true class indices and the ensemble's labels (-1 = referred)."""
    y, label = np.asarray(y), np.asarray(label)
    wrong = (label >= 0) & (label != y)
    return {"n": int(len(y)), **accepted_metrics(y, label), "confident_errors": int(wrong.sum()),
            "confident_error_rate": float(wrong.mean()) if len(y) else 0.0}


def judge(row: dict, base: dict, factor: float = GOAL_FACTOR) -> dict:
    """row with `vs_unshifted` (its confident-error rate / the unshifted one; None when that is 0) and
    `breaks_goal` (above factor × the unshifted rate; with none unshifted, any confident error)."""
    b, r = base["confident_error_rate"], row["confident_error_rate"]
    return {**row, "vs_unshifted": (r / b) if b > 0 else None, "breaks_goal": bool(r > factor * b)}


def verdict(rows: list[dict], base: dict, factor: float = GOAL_FACTOR) -> str:
    """One sentence: the goal met, or which shifts break it and where."""
    broken = [r for r in rows if r["breaks_goal"]]
    limit = f"{factor:g} × the unshifted {100 * base['confident_error_rate']:.1f} %"
    if not broken:
        return f"Goal met: under every shift the confident-error rate stays ≤ {limit}."
    worst: dict[str, dict] = {}
    for r in broken:
        if r["shift"] not in worst or r["confident_error_rate"] > worst[r["shift"]]["confident_error_rate"]:
            worst[r["shift"]] = r
    first = {s: next(x for x in broken if x["shift"] == s) for s in worst}    # rows run mild → severe
    parts = [f"{s} from {first[s]['strength_label']} (worst {100 * w['confident_error_rate']:.1f} % at "
             f"{w['strength_label']})" for s, w in worst.items()]
    return f"Goal broken (confident errors above {limit}) by: " + "; ".join(parts) + "."
