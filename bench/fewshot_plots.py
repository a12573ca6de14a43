"""The figures of the few-shot evaluation (bench/eval_fewshot.py): one PNG per model and figure, beside
docs/eval/report.md, which links them.

Apart from the report's text because they need matplotlib (headless, through bench.plots.pyplot) and read the
runs' raw arrays, not the rendered tables: ``fewshot_<model>.png`` (learning curves), ``declared_<model>.png``
(all-classes protocol) and ``oos_roc_<model>.png`` (out-of-scope ROC curves).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.evaluation import ALL_METHODS, METHODS
from bench.plots import pyplot


def plot_curves(model: str, runs: dict, path: Path) -> None:
    """Accuracy and macro-F1 vs examples seen (log x), one row per run; ticks show the known classes."""
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 4.4 * len(runs)), squeeze=False)
    styles = {"zero-shot": ("k", "--"), "ours": ("C3", "-"), "ours, no prior": ("C3", ":"),
              "ours, opaque ids": ("C1", "-."), "ours, diagonal cov": ("C5", "--"), "logreg": ("C0", "-"),
              "NCM": ("C2", "-"), "PA": ("C4", "-")}
    for r, (name, run) in enumerate(runs.items()):
        res = run["res"]
        x = np.array(run["ks"], float)
        ticks = [f"{lab}\n{c:.0f} cls" for lab, c in zip(run["labels"], res["classes"].mean(0), strict=True)]
        for c, metric in enumerate(("acc", "f1")):
            ax = axes[r][c]
            for method in METHODS:
                arr = res[metric][method]
                col, ls = styles[method]
                m, s = arr.mean(0), arr.std(0)
                ax.plot(x, m, color=col, ls=ls, marker="o", ms=3, label=method)
                if arr.shape[0] > 1:
                    ax.fill_between(x, m - s, m + s, color=col, alpha=0.12)
            ax.set_xscale("log", base=2)
            ax.set_xticks(x, ticks, fontsize=8)
            ax.minorticks_off()
            ax.set_xlabel("training examples seen (stream); classes known so far")
            ax.set_ylabel(("accuracy" if metric == "acc" else "macro-F1") + " on the known classes")
            ax.set_title(f"{model} — {name}", fontsize=10)
            ax.grid(alpha=0.3)
            lowest = min(float(np.nanmin(res[metric][mm].mean(0))) for mm in METHODS)
            ax.set_ylim(min(0.3, np.floor(lowest * 10) / 10), 1.0)
        axes[r][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all_classes(model: str, run: dict, path: Path) -> None:
    """All-classes protocol: accuracy on all of a domain's test classes vs examples seen (0 = before any)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    x = np.arange(len(run["ks"]))
    styles = {"zero-shot": ("k", "--"), "ours, declared labels": ("C3", "-"), "ours": ("C3", ":"),
              "logreg": ("C0", "-"), "NCM": ("C2", "-"), "PA": ("C4", "-")}
    for m in ALL_METHODS:
        arr = run["acc"][m]
        mean, std = np.nanmean(arr, 0), np.nanstd(arr, 0)
        col, ls = styles[m]
        ax.plot(x, mean, color=col, ls=ls, marker="o", ms=3, label=m)
        ax.fill_between(x, mean - std, mean + std, color=col, alpha=0.12)
    ax.set_xticks(x, run["labels"], fontsize=8)
    ax.set_xlabel("training examples seen (stream); all labels declared at create for 'ours, declared labels'")
    ax.set_ylabel("accuracy on ALL test classes of the domain")
    ax.set_title(f"{model} — CLINC per domain (15-way), all-classes protocol, mean ± std over seeds", fontsize=10)
    ax.set_ylim(0.3, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(model: str, run: dict, path: Path) -> None:
    """OOS ROC curves (CLINC oos_test vs a domain's in-scope test set, seed 0, pooled over domains)."""
    from classifiers.zeroshot.oos import roc_curve

    plt = pyplot()

    ks = list(run["roc"])
    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 4.2), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for name, (si, so) in run["roc"][k].items():
            fpr, tpr = roc_curve(si, so)
            ax.plot(fpr, tpr, label=name, lw=1.4 if name.startswith(("ours", "max cosine (ours")) else 1.0)
        ax.axvline(0.05, color="grey", ls=":", lw=0.8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        lab = "zero-shot" if k == "0" else f"few-shot, {k} examples"
        ax.set_title(f"{model}\n{lab}", fontsize=9)
        ax.set_xlabel("in-scope false-alarm rate")
        ax.set_ylabel("OOS recall")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
