"""The audit's plots as PNG bytes (matplotlib, Agg; evaluate.plots' figure handling): where a person
would rather look than read (intervals against a bound, outcomes as bars, rates over runs)."""
from __future__ import annotations

import numpy as np

from .. import schema
from ..evaluate.plots import figure_png, pyplot

RIGHT, WRONG, GREY, RED = "#17692f", "#b3261e", "#8a94a0", "#b3261e"


def accepted_plot(acc: dict, classes) -> bytes | None:
    """Error rate among accepted images, overall and per label given, with intervals and the γ bound."""
    rows = [("all accepted", acc)] + [(c, acc["by_class"][c]) for c in classes]
    rows = [(name, r) for name, r in rows if r["n"]]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    for yi, (name, r) in zip(y, rows):
        ax.plot([r["low"], r["high"]], [yi, yi], color="#3b7dd8", lw=3)
        ax.plot(r["rate"], yi, "o", color="#1d2329")
        ax.text(r["high"], yi, f"  {r['k']}/{r['n']}", va="center", fontsize=9)
    stated = acc.get("stated")
    if stated:
        ax.axvline(stated["bound"], color=RED, ls="--", label=f"γ rule's bound {stated['bound']:.3f}")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_yticks(y, [name for name, _ in rows])
    ax.set(xlim=(0, 1), xlabel="error rate among accepted images (audit sample), exact interval",
           title="Did the ensemble label the accepted images right?")
    return figure_png(fig)


def referred_plot(ref: dict, classes) -> bytes | None:
    """What the referred images turned out to be."""
    if not ref["n"]:
        return None
    plt = pyplot()
    names = list(classes) + [schema.REVIEW_EXTRA_LABELS[k] for k in schema.REVIEW_EXTRA_LABELS]
    right = [ref["classes"][c]["argmax_right"] for c in classes] + [0, 0]
    wrong = [ref["classes"][c]["n"] - ref["classes"][c]["argmax_right"] for c in classes] + \
            [ref[k] for k in schema.REVIEW_EXTRA_LABELS]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(names))
    ax.bar(x, right, color=RIGHT, label="a class; the ensemble's argmax was right")
    ax.bar(x, wrong, bottom=right, color=[WRONG] * len(classes) + [GREY, GREY],
           label="a class the argmax missed / not a class")
    ax.set_xticks(x, names, rotation=20)
    ax.set(ylabel="referred images", title=f"What the {ref['n']} reviewed referred images turned out to be")
    ax.legend(fontsize=9)
    return figure_png(fig)


def runs_plot(runs: list[dict]) -> bytes | None:
    """Each run's image-rule referral rate with its interval, against the rule's bound."""
    runs = [r for r in runs if r["n"]]
    if not runs:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(runs))
    for xi, r in zip(x, runs):
        colour = RED if r["drift"] else "#3b7dd8"
        ax.plot([xi, xi], [r["low"], r["high"]], color=colour, lw=3)
        ax.plot(xi, r["rate"], "o", color=colour)
    bound = next((r["bound"] for r in runs if r["bound"] is not None), None)
    if bound is not None:
        ax.axhline(bound, color=RED, ls="--", label=f"image rule's bound {bound:.4f}")
        ax.legend(fontsize=9)
    ax.set_xticks(x, [str(r["run_id"])[:15] for r in runs], rotation=20, fontsize=8)
    ax.set(ylabel="share referred as unlike the training images", ylim=(0, None),
           title="Image-rule referral rate per classify run (red: above the bound)")
    return figure_png(fig)


def all_plots(doc: dict, classes) -> dict[str, bytes]:
    plots = {"Error rate among accepted images": accepted_plot(doc["accepted"], classes),
             "What referred images turned out to be": referred_plot(doc["referred"], classes),
             "Referral rate per classify run": runs_plot(doc["runs"])}
    return {k: v for k, v in plots.items() if v is not None}
