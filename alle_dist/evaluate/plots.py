"""The report's plots as PNG bytes (matplotlib, Agg), drawn at 150 dpi so they stay sharp at the
page's full column width; `all_plots(doc)` gives them under readable titles, as page.render takes them.
"""
from __future__ import annotations

import io

import numpy as np

DPI = 150


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def plot_confusion(name: str, m: dict, classes) -> bytes:
    """Counts and row percentages; the last column is the referrals."""
    plt = pyplot()
    counts, pct = np.array(m["confusion"]["counts"]), np.array(m["confusion"]["percent"])
    fig, ax = plt.subplots(figsize=(6, 4.8))
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    cols = list(classes) + ["referred"]
    ax.set_xticks(range(len(cols)), cols, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{v}\n{pct[i, j]:.1f} %", ha="center", va="center", fontsize=9,
                color="white" if pct[i, j] > 60 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{name}: confusion matrix (counts, % of row)")
    return figure_png(fig)


def plot_roc(name: str, m: dict) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.8))
    for c, r in m["roc"].items():
        if r["auc"] is not None:
            ax.plot(r["fpr"], r["tpr"], label=f"{c} (AUC {r['auc']:.4f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{name}: ROC, one class vs the rest")
    ax.legend(loc="lower right", fontsize=9)
    return figure_png(fig)


def plot_coverage_risk(models: dict) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for name, m in models.items():
        cr = m["coverage_risk"]
        ax.plot(cr["coverage"], cr["risk"], label=f"{name} (AURC {cr['aurc']:.4f})")
    ax.set(xlabel="coverage (share of images labelled, most confident first)",
           ylabel="risk (error rate among the labelled)", title="Coverage and risk")
    ax.legend(fontsize=9)
    return figure_png(fig)


def plot_reliability(models: dict) -> bytes:
    """Accuracy against confidence per bin, before and after temperature scaling; under each panel
    the number of images per bin (log scale), so a point resting on three images reads as such."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(2, 2, figsize=(12, 6.8), sharex=True, sharey="row",
                             gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08})
    names = list(models)
    for col, when in enumerate(("before", "after")):
        top, bottom = axes[0, col], axes[1, col]
        for k, name in enumerate(names):
            m = models[name]
            b = m["reliability"][when]
            count, edges = np.array(b["count"]), np.array(b["edges"])
            keep = count > 0
            e = m["ece_before_temperature"] if when == "before" else m["ece"]
            line, = top.plot(np.array(b["confidence"])[keep], np.array(b["accuracy"])[keep], "o-", ms=4,
                             label=f"{name} (ECE {e:.4f})")
            width = np.diff(edges) / (len(names) + 1)
            bottom.bar(edges[:-1] + width * (k + 0.5), np.where(keep, count, np.nan), width=width,
                       align="edge", color=line.get_color())
        top.plot([0, 1], [0, 1], "k:", lw=0.8)
        top.set_title(f"Reliability {when} temperature scaling")
        top.legend(fontsize=9, loc="upper left")
        top_count = max(max(models[n]["reliability"][when]["count"]) for n in names)
        bottom.set_yscale("log")
        bottom.set_ylim(0.5, 2.5 * max(top_count, 1))   # from 0.5: a bin of one image still shows a bar
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bottom.set_xlabel("confidence (top probability)")
    axes[0, 0].set_ylabel("accuracy in the bin")
    axes[1, 0].set_ylabel("images per bin")
    axes[0, 0].set_xlim(0, 1)
    return figure_png(fig)


STRESS_TITLE = "Under shift: "    # the page shows these plots in its stress section


def plot_stress(stress: dict, shift: str) -> bytes:
    """One shift of stress.json: coverage and accuracy on accepted images (left) and the confident-error
    rate with the goal (right), from unshifted to the most severe strength."""
    plt = pyplot()
    base = stress["unshifted"]
    rows = [r for r in stress["rows"] if r["shift"] == shift]
    series = [base] + rows
    x = np.arange(len(series))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(x, [r["coverage"] for r in series], "o-", label="coverage")
    left.plot(x, [np.nan if r["accuracy_on_accepted"] is None else r["accuracy_on_accepted"] for r in series], "s-",
              label="accuracy on accepted")
    left.set(ylim=(0, 1.02), ylabel="share of images", title=f"{shift}: coverage and accuracy")
    left.legend(fontsize=9, loc="lower left")
    right.bar(x, [100 * r["confident_error_rate"] for r in series],
              color=["#888"] + ["#b3261e" if r["breaks_goal"] else "#3b7dd8" for r in rows])
    goal = 100 * stress["goal_factor"] * base["confident_error_rate"]
    right.axhline(goal, color="k", ls=":", lw=1, label=f"goal: ≤ {stress['goal_factor']:g} × unshifted ({goal:.1f} %)")
    right.set(ylabel="confident errors (% of images)", title=f"{shift}: accepted and wrong")
    right.legend(fontsize=9, loc="upper left")
    for ax in (left, right):
        ax.set_xticks(x, ["none"] + [r["strength_label"] for r in rows], fontsize=9)
    return figure_png(fig)


def plot_set(doc: dict) -> list[tuple[str, str, bytes]]:
    """(file stem, readable title, PNG) of every plot of the report, in page order; the stems name
    the PNG files written beside report.html."""
    from ..rundir import RunDir

    classes = list(doc["per_class"])
    stress = doc.get("stress")
    out = [(RunDir.stress_plot_name(s).rsplit(".", 1)[0], STRESS_TITLE + s, plot_stress(stress, s))
           for s in (stress or {}).get("shifts", {})]
    out += [("coverage_risk", "Coverage and risk", plot_coverage_risk(doc["models"])),
           ("reliability", "Calibration: reliability diagram with images per bin", plot_reliability(doc["models"]))]
    for name, m in doc["models"].items():
        out.append((f"confusion_{name}", f"Confusion matrix: {name}", plot_confusion(name, m, classes)))
        out.append((f"roc_{name}", f"ROC curves: {name}", plot_roc(name, m)))
    return out


def all_plots(doc: dict) -> dict[str, bytes]:
    """{readable title: PNG} of every plot of the report, in page order (as page.render takes them)."""
    return {title: png for _, title, png in plot_set(doc)}
