"""The bench suite's plots (docs/bench/*.png): per model, inputs/s, p50 and p99 against client concurrency for each
system and workload; and Ray Serve's switches side by side."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def workload_axes(axes, mine: list[dict], model: str, kind: str, size: int) -> None:
    """One row of a model's figure: every system/endpoint line of one (input length, inputs per request)."""
    for line in dict.fromkeys(f"{r['system']} {r['endpoint']}" for r in mine):
        pts = sorted(((r["concurrency"], r) for r in mine
                      if f"{r['system']} {r['endpoint']}" == line and (r["kind"], r["size"]) == (kind, size)),
                     key=lambda p: p[0])
        if not pts:
            continue
        xs = [c for c, _ in pts]
        for col, (key, label) in enumerate([("inputs_per_s", "inputs/s"), ("p50", "p50 latency (ms)"),
                                            ("p99", "p99 latency (ms)")]):
            # a cell with no completed request has no latency: a gap, not a 0 on a log axis
            axes[col].plot(xs, [r[key] if r[key] else float("nan") for _, r in pts], marker="o", label=line)
            axes[col].set_title(f"{model}: {kind} inputs, {size}/request — {label}", fontsize=9)
            axes[col].set_xscale("log", base=2)
            axes[col].set_xlabel("client concurrency")
            if col and any(r[key] for _, r in pts):
                axes[col].set_yscale("log")


def model_plots(res: dict, plots: Path) -> list[str]:
    plt = pyplot()
    written = []
    cells = [r for r in res["rows"] if not r["system"].startswith("switch:") and not r.get("skipped")]
    for model in dict.fromkeys(r["model"] for r in cells):
        mine = [r for r in cells if r["model"] == model or (r["system"] == "infinity" and model == "all-MiniLM-L6-v2")]
        workloads = list(dict.fromkeys((r["kind"], r["size"]) for r in mine))
        fig, axes = plt.subplots(len(workloads), 3, figsize=(15, 3.6 * len(workloads)), squeeze=False)
        for w, (kind, size) in enumerate(workloads):
            workload_axes(axes[w], mine, model, kind, size)
            raw_best = res["raw"].get(model, {}).get(kind, {}).get("best")
            if raw_best:
                axes[w][0].axhline(raw_best, color="grey", linestyle="--", label="raw (best batch)")
            axes[w][0].legend(fontsize=7)
        fig.tight_layout()
        path = plots / f"{model}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(str(path))
    return written


def switch_plot(res: dict, plots: Path) -> list[str]:
    sw = [r for r in res["rows"] if r["system"].startswith("switch:")]
    if not sw:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    confs = list(dict.fromkeys(r["system"][7:] for r in sw))
    concs = sorted({r["concurrency"] for r in sw})
    width = 0.8 / len(concs)
    for k, conc in enumerate(concs):
        vals = {r["system"][7:]: r for r in sw if r["concurrency"] == conc}
        for col, key in enumerate(["rps", "p50", "p99"]):
            axes[col].bar([i + k * width for i in range(len(confs))],
                          [(vals[c][key] or 0) if c in vals else 0 for c in confs], width, label=f"concurrency {conc}")
    for col, title in enumerate(["requests/s", "p50 latency (ms)", "p99 latency (ms)"]):
        axes[col].set_xticks([i + width * (len(concs) - 1) / 2 for i in range(len(confs))], confs, fontsize=7)
        axes[col].set_title(f"Ray Serve switches, MiniLM 1 input — {title}", fontsize=9)
        axes[col].legend(fontsize=7)
    fig.tight_layout()
    path = plots / "ray_switches.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [str(path)]


def plot(res: dict, plots: Path) -> list[str]:
    """Every plot of one results dict, written under ``plots``; returns their paths."""
    plots.mkdir(parents=True, exist_ok=True)
    return model_plots(res, plots) + switch_plot(res, plots)
