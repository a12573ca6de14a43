"""Learning from classified inputs, without labels (issue 29): the prequential evaluation on CLINC150.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/eval_unlabeled.py --data ../shared/data/text --out docs/eval

Protocol (in-process, the service's own code: ``FewShotLearner.declare`` / ``update`` / ``learn_unlabeled`` /
``compile().predict_proba``; embeddings through the real encoder, cached under .cache/eval/ by bench/evaluation.py):

* a classifier with every label of the setting declared (its label vectors: the registry's zero-shot recipe), fed a
  shuffled stream of the setting's unlabelled inputs in chunks of 50; each chunk is answered by the compiled
  classifier *before* it learns the chunk (``learn_unlabeled``), and scored by those answers;
* against the same classifier without learning on the same chunks: plain zero-shot (identical logits) for the
  declared-labels classifier, and the classifier with 8 labelled examples per class (from the *train* split,
  trained at create) for the mixed setting;
* settings: 150-way (all intents, one classifier) and per domain (the 10 CLINC domains, 15-way each, averaged);
  both built-in models; 3 seeds (stream orders and labelled draws). Extra, not in the issue's goals: 150-way
  traffic from a fifth of the intents (30 random intents, 150 declared), the case that broke a shared adaptation;
* checkpoints: every 200 inputs and the stream's end (per domain, whose test stream is 195 inputs, every chunk);
  at each, the accuracy so far (cumulative from the start), averaged over seeds (and domains);
* ECE: 10 equal-width bins over all of a setting's answers on the stream pooled (the 10 domains together), per
  seed, then the mean (issue 28's protocol, bench/eval_calibration.py).

The reported streams are the **test** split (13 inputs per intent: 1,950 for 150-way, 195 per domain). Every
constant of the method (classifiers/fewshot/learner_config.py, ``unlabeled_*``) was chosen on **train**-split streams
(33 per intent: 4,950 / 495, labelled examples held out of the stream); ``--splits train`` reruns the final method
there and ``--ablations`` the study of its constants and guards (each changed alone, train streams), reported in
docs/eval/unlabeled.md. Nothing here imports Ray.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.evaluation import embed, embed_labels, get_spec, load_domains, read_csv  # noqa: E402
from classifiers.fewshot import learner as learner_module  # noqa: E402
from classifiers.fewshot.learner import FewShotLearner  # noqa: E402
from classifiers.fewshot.learner_config import LearnerConfig  # noqa: E402
from classifiers.fewshot.unlabeled import MAX_HALVINGS, UnlabeledRecord  # noqa: E402

MODELS = ("multilingual-e5-small", "all-MiniLM-L6-v2")
CHUNK = 50
CHECK_EVERY = 200
N_LABELED = 8
WARMUP = 1000  # the goal's "after 1,000 unlabelled inputs"
GAIN_GOAL, SLACK, ECE_BOUND = 0.04, 0.01, 0.05
SUBSET_SHARE = 0.2
PLOT = "unlabeled_accuracy.png"
MODES = ("declared", "declared + 8 labelled")


@dataclass
class Task:
    """One classifier: its classes, the stream pool (class indices into ``names``) and its labelled pool."""

    name: str
    names: list[str]
    L: np.ndarray  # (K, D) label vectors
    X: np.ndarray  # stream inputs
    y: np.ndarray
    Xtr: np.ndarray  # where labelled examples come from (the train split)
    ytr: np.ndarray


# ----------------------------------------------------------------------------------------------- data
def load_tasks(model: str, data: Path, split: str) -> dict[str, list[Task]]:
    """{setting: its classifiers}: ``150-way`` (one), ``per domain`` (10) and the ``150-way, a fifth of the intents``
    stream (one per seed is drawn later; here the 150-way task)."""
    train, test = read_csv(data / "train.csv"), read_csv(data / "test.csv")
    X = embed(model, train.texts + test.texts, "input", progress=False).astype(np.float64)
    Xtr, Xte = X[: len(train.texts)], X[len(train.texts):]
    names = sorted(set(train.labels))
    index = {n: i for i, n in enumerate(names)}
    L = embed_labels(model, names)
    ytr = np.array([index[v] for v in train.labels])
    yte = np.array([index[v] for v in test.labels])
    Xs, ys = (Xte, yte) if split == "test" else (Xtr, ytr)
    tasks = {"150-way": [Task("150-way", names, L, Xs, ys, Xtr, ytr)], "per domain": []}
    for dom, members in load_domains(data / "label_domains.json").items():
        ids = np.array([index[n] for n in members])
        local = np.full(len(names), -1)
        local[ids] = np.arange(len(ids))
        ms, mt = np.isin(ys, ids), np.isin(ytr, ids)
        tasks["per domain"].append(Task(dom, list(members), L[ids], Xs[ms], local[ys[ms]], Xtr[mt], local[ytr[mt]]))
    return tasks


def labeled_draw(task: Task, rng: np.random.Generator) -> np.ndarray:
    """Indices into the task's train pool: ``N_LABELED`` per class."""
    return np.concatenate([rng.permutation(np.flatnonzero(task.ytr == k))[:N_LABELED] for k in range(len(task.names))])


def stream_order(task: Task, rng: np.random.Generator, split: str, labeled: np.ndarray | None,
                 subset: bool) -> np.ndarray:
    """The shuffled stream (indices into ``task.X``); on the train split the labelled examples are held out of it;
    ``subset``: only the inputs of a random fifth of the classes."""
    idx = np.arange(len(task.y))
    if split == "train" and labeled is not None:
        idx = np.setdiff1d(idx, labeled)
    if subset:
        keep = rng.permutation(len(task.names))[: max(1, int(round(SUBSET_SHARE * len(task.names))))]
        idx = idx[np.isin(task.y[idx], keep)]
    return rng.permutation(idx)


# --------------------------------------------------------------------------------------------- stream
OVERRIDES: dict = {}  # LearnerConfig fields changed for an ablation (run_ablations); empty: the served config


def new_learner(task: Task, spec, labeled: np.ndarray | None) -> FewShotLearner:
    """The classifier as the service builds it: every label declared, the served config (class limit raised to
    the task's size), labelled examples (if any) trained at create with weight 1 (num_iters 10)."""
    K = len(task.names)
    cfg = LearnerConfig(**{"max_classes": max(16, K), **OVERRIDES})
    lrn = FewShotLearner(task.X.shape[1], score_scale=spec.score_scale, config=cfg)
    lrn.declare({n: task.L[j] for j, n in enumerate(task.names)})
    if labeled is not None:
        lrn.update(task.Xtr[labeled], [task.names[j] for j in task.ytr[labeled]], weight=1.0)
    return lrn


def run_stream(task: Task, spec, seed: int, mode: str, split: str, subset: bool = False) -> dict:
    """One classifier fed one stream: per input, whether the learning classifier and the one without learning
    were right and their confidence; the anchor check's shrinks; seconds spent in learn_unlabeled and compile."""
    rng = np.random.default_rng([seed, len(task.names)])
    labeled = labeled_draw(task, rng) if mode != "declared" else None
    order = stream_order(task, rng, split, labeled, subset)
    learner = new_learner(task, spec, labeled)
    base = FewShotLearner.from_state(learner.to_state()).compile()  # never learns: compiled once
    out: dict = {k: [] for k in ("hit", "hit_base", "conf", "conf_base", "shrink")}
    t_learn = t_compile = 0.0
    for pos in range(0, len(order), CHUNK):
        sel = order[pos: pos + CHUNK]
        X, y = task.X[sel], task.y[sel]
        t0 = time.perf_counter()
        pred = learner.compile()
        t_compile += time.perf_counter() - t0
        P, Q = pred.predict_proba(X), base.predict_proba(X)
        out["hit"].append(P.argmax(1) == y)
        out["conf"].append(P.max(1))
        out["hit_base"].append(Q.argmax(1) == y)
        out["conf_base"].append(Q.max(1))
        out["shrink"].append(float(learner.diagnostics.get("unlabeled_shrink", 1.0)))
        t0 = time.perf_counter()
        learned = learner.learn_unlabeled(X.astype(np.float32))
        t_learn += time.perf_counter() - t0
        assert learned == len(sel)
    res: dict = {k: np.concatenate(v) if k != "shrink" else np.array(v) for k, v in out.items()}
    res.update(t_learn=t_learn, t_compile=t_compile, n=len(order), chunks=len(out["hit"]),
               inputs_learned=learner.inputs_learned, state_bytes=learner.state_nbytes())
    return res


# ------------------------------------------------------------------------------------------- metrics
def ece10(conf: np.ndarray, hit: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error, equal-width bins (as classifiers.zeroshot.calibrate.ece10)."""
    conf = np.asarray(conf, np.float64)
    b = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    return float(np.abs(np.bincount(b, weights=hit.astype(np.float64) - conf, minlength=bins)).sum() / conf.size)


def checkpoints(n: int) -> list[int]:
    step = CHECK_EVERY if n >= 2 * CHECK_EVERY else CHUNK
    return sorted({k for k in range(step, n + 1, step)} | {n})


def summarize(runs: list[list[dict]]) -> dict:
    """``runs[seed][task]`` -> cumulative accuracy curves (mean over tasks, then seeds), gains, rest of the stream
    after WARMUP inputs, pooled ECE, guard and cost figures."""
    n = min(r["n"] for seed in runs for r in seed)
    ks = checkpoints(n)

    def curve(key: str) -> np.ndarray:
        return np.mean([[np.mean([r[key][:k].mean() for r in seed]) for k in ks] for seed in runs], 0)

    acc, base = curve("hit"), curve("hit_base")
    out = {"checkpoints": ks, "acc": acc.tolist(), "acc_base": base.tolist(), "gain": (acc - base).tolist(),
           "min_gain": float((acc - base).min()), "final_gain": float(acc[-1] - base[-1]), "n": n,
           "seeds": len(runs), "tasks": len(runs[0])}
    if n > WARMUP:
        rest = [np.mean([r["hit"][WARMUP:].mean() - r["hit_base"][WARMUP:].mean() for r in seed]) for seed in runs]
        out["rest_gain"], out["rest_gain_per_seed"] = float(np.mean(rest)), [float(v) for v in rest]
    for key, conf, hit in (("ece", "conf", "hit"), ("ece_base", "conf_base", "hit_base")):
        per_seed = [ece10(np.concatenate([r[conf] for r in seed]), np.concatenate([r[hit] for r in seed]))
                    for seed in runs]
        out[key] = float(np.mean(per_seed))
    rows = sum(r["n"] for seed in runs for r in seed)
    out["us_per_input"] = 1e6 * sum(r["t_learn"] for seed in runs for r in seed) / rows
    out["ms_per_compile"] = 1e3 * sum(r["t_compile"] for seed in runs for r in seed) / sum(
        r["chunks"] for seed in runs for r in seed)
    shrinks = np.concatenate([r["shrink"] for seed in runs for r in seed])
    out["anchor_check_binds"] = float((shrinks < 1.0).mean())
    out["state_bytes"] = int(np.mean([r["state_bytes"] for seed in runs for r in seed]))
    return out


def evaluate_model(model: str, data: Path, split: str, seeds: int) -> dict:
    spec = get_spec(model)
    tasks = load_tasks(model, data, split)
    res: dict = {}
    for setting, group in tasks.items():
        for mode in MODES:
            runs = [[run_stream(t, spec, s, mode, split) for t in group] for s in range(seeds)]
            res.setdefault(setting, {})[mode] = summarize(runs)
            print(f"  {model} {split} {setting} {mode}: {fmt_row(res[setting][mode])}", flush=True)
    runs = [[run_stream(tasks["150-way"][0], spec, s, "declared", split, subset=True)] for s in range(seeds)]
    res[SUBSET] = {"declared": summarize(runs)}
    print(f"  {model} {split} {SUBSET}: {fmt_row(res[SUBSET]['declared'])}", flush=True)
    return res


SUBSET = f"150-way, traffic from {int(SUBSET_SHARE * 150)} intents"


# ------------------------------------------------------------------------------------------ ablations
@contextlib.contextmanager
def one_shared_share() -> Iterator[None]:
    """The variant the per-class shares replaced: every class moves by the same share N / (N + pseudo_count K)."""
    per_class = UnlabeledRecord.shares

    def shares(self: UnlabeledRecord, cfg: LearnerConfig) -> np.ndarray:
        lam = per_class(self, cfg)
        if not (lam > 0).any():
            return lam
        N = float(self.n.sum())
        return np.full_like(lam, min(cfg.unlabeled_max_share, N / (N + cfg.unlabeled_pseudo_count * len(lam))))

    UnlabeledRecord.shares = shares  # type: ignore[method-assign]
    try:
        yield
    finally:
        UnlabeledRecord.shares = per_class  # type: ignore[method-assign]


@contextlib.contextmanager
def no_anchor_check() -> Iterator[None]:
    """The adapted zero-shot part blended in whole, whatever the labelled class means then get."""
    check = learner_module.anchored
    learner_module.anchored = lambda blend, anchors, own: (*blend(1.0), 1.0)
    try:
        yield
    finally:
        learner_module.anchored = check


# (name, LearnerConfig overrides, patch, modes): each changes one thing of the final method
ABLATIONS: list[tuple[str, dict, object, tuple[str, ...]]] = [
    ("the method (defaults)", {}, None, MODES),
    ("no minimum evidence (unlabeled_min_per_class 0)", {"unlabeled_min_per_class": 0.0}, None, ("declared",)),
    ("minimum evidence 1 input per class", {"unlabeled_min_per_class": 1.0}, None, ("declared",)),
    ("minimum evidence 3 inputs per class", {"unlabeled_min_per_class": 3.0}, None, ("declared",)),
    ("one share for all classes", {}, one_shared_share, ("declared",)),
    ("no drift limit (unlabeled_max_share 1)", {"unlabeled_max_share": 1.0}, None, ("declared",)),
    ("unlabeled_max_share 0.6", {"unlabeled_max_share": 0.6}, None, ("declared",)),
    ("unlabeled_pseudo_count 8", {"unlabeled_pseudo_count": 8.0}, None, ("declared",)),
    ("anchor = plain zero-shot posterior (unlabeled_sharpness 1)", {"unlabeled_sharpness": 1.0}, None, ("declared",)),
    ("unlabeled_sharpness 1.5", {"unlabeled_sharpness": 1.5}, None, ("declared",)),
    ("dot-product prototypes (unlabeled_bias 0)", {"unlabeled_bias": 0.0}, None, ("declared",)),
    ("Euclidean prototypes (unlabeled_bias 1)", {"unlabeled_bias": 1.0}, None, ("declared",)),
    ("no rescaling of the adapted scores (unlabeled_scale_gain 1)", {"unlabeled_scale_gain": 1.0}, None,
     ("declared",)),
    ("unlabeled_scale_gain 1.2", {"unlabeled_scale_gain": 1.2}, None, ("declared",)),
    ("unlabeled_scale_gain 1.6", {"unlabeled_scale_gain": 1.6}, None, ("declared",)),
    ("class cap 10 (unlabeled_class_cap)", {"unlabeled_class_cap": 10.0}, None, ("declared",)),
    ("no anchor check", {}, no_anchor_check, ("declared + 8 labelled",)),
]


def run_ablations(model: str, data: Path, seeds: int) -> dict:
    """{variant: {setting: {mode: summary}}} on the *train* streams (where the constants were chosen)."""
    spec = get_spec(model)
    tasks = load_tasks(model, data, "train")
    out: dict = {}
    for name, overrides, patch, modes in ABLATIONS:
        OVERRIDES.clear()
        OVERRIDES.update(overrides)
        with patch() if callable(patch) else contextlib.nullcontext():
            res: dict = {}
            for mode in modes:
                for setting in ("150-way", "per domain"):
                    runs = [[run_stream(t, spec, s, mode, "train") for t in tasks[setting]] for s in range(seeds)]
                    res.setdefault(setting, {})[mode] = summarize(runs)
            if "declared" in modes:
                runs = [[run_stream(tasks["150-way"][0], spec, s, "declared", "train", subset=True)]
                        for s in range(seeds)]
                res[SUBSET] = {"declared": summarize(runs)}
        OVERRIDES.clear()
        out[name] = res
        print(f"  ablation {model} {name}: " + "; ".join(f"{st} {mo}: {fmt_row(v)}" for st, ms in res.items()
                                                        for mo, v in ms.items()), flush=True)
    return out


def fmt_row(s: dict) -> str:
    rest = f" rest {s['rest_gain']:+.3f}" if "rest_gain" in s else ""
    return (f"acc {s['acc'][-1]:.3f} vs {s['acc_base'][-1]:.3f} (gain {s['final_gain']:+.3f}, min {s['min_gain']:+.3f}"
            f"{rest}) ECE {s['ece']:.3f} vs {s['ece_base']:.3f}")


# --------------------------------------------------------------------------------------------- goals
def check_goals(models: dict) -> list[tuple[str, bool, str]]:
    """(goal, met, measured) per model and setting, on the test streams."""
    goals = []
    for model, splits in models.items():
        res = splits["test"]
        s = res["150-way"]["declared"]
        goals.append((f"{model}: 150-way, accuracy over zero-shot on the stream after {WARMUP} inputs >= "
                      f"+{GAIN_GOAL:.2f}", s["rest_gain"] >= GAIN_GOAL,
                      f"{s['rest_gain']:+.3f} (seeds {', '.join(f'{v:+.3f}' for v in s['rest_gain_per_seed'])})"))
        for setting, modes in res.items():
            for mode, s in modes.items():
                ref = "zero-shot" if mode == "declared" else "the same classifier without learning"
                extra = " (extra setting, not an issue goal)" if setting == SUBSET else ""
                goals.append((f"{model}: {setting}{extra}, {mode}: accuracy so far >= {ref} - {SLACK:.2f} at every "
                              "checkpoint", s["min_gain"] >= -SLACK, f"lowest gain {s['min_gain']:+.3f}"))
                goals.append((f"{model}: {setting}{extra}, {mode}: ECE on the stream <= {ECE_BOUND:.2f} (issue 28)",
                              s["ece"] <= ECE_BOUND, f"{s['ece']:.3f} (without learning {s['ece_base']:.3f})"))
    return goals


# --------------------------------------------------------------------------------------------- plots
def plot(models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(next(iter(models.values()))["test"])
    fig, axes = plt.subplots(len(models), len(settings), figsize=(5 * len(settings), 3.6 * len(models)), squeeze=False)
    for r, (model, splits) in enumerate(models.items()):
        for c, setting in enumerate(settings):
            ax = axes[r][c]
            for mode, s in splits["test"][setting].items():
                tag = "declared" if mode == "declared" else "+8 labelled/class"
                base = "zero-shot" if mode == "declared" else "+8 labelled/class, no learning"
                line = ax.plot(s["checkpoints"], s["acc"], marker="o", ms=3, label=f"{tag}, learning")[0]
                ax.plot(s["checkpoints"], s["acc_base"], ls="--", color=line.get_color(), label=base)
            ax.set_title(f"{model}: {setting}", fontsize=9)
            ax.set_xlabel("unlabelled inputs seen (test stream)", fontsize=8)
            ax.set_ylabel("accuracy so far (cumulative)", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- markdown
def results_table(res: dict) -> list[str]:
    lines = ["| setting | classifier | inputs | accuracy without learning | with learning | gain (whole stream) | "
             f"gain after {WARMUP} | lowest gain at a checkpoint | ECE without / with | anchor check bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, modes in res.items():
        for mode, s in modes.items():
            rest = f"{s['rest_gain']:+.3f}" if "rest_gain" in s else "-"
            lines.append(f"| {setting} | {mode} | {s['n']} x {s['tasks']} | {s['acc_base'][-1]:.3f} | {s['acc'][-1]:.3f} "
                         f"| {s['final_gain']:+.3f} | {rest} | {s['min_gain']:+.3f} | {s['ece_base']:.3f} / "
                         f"{s['ece']:.3f} | {s['anchor_check_binds']:.0%} of chunks |")
    return lines


def curve_table(res: dict, setting: str) -> list[str]:
    ks = res[setting]["declared"]["checkpoints"]
    lines = ["| classifier | " + " | ".join(str(k) for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for mode, s in res[setting].items():
        ref = "zero-shot" if mode == "declared" else "no learning"
        lines.append(f"| {mode}, {ref} | " + " | ".join(f"{v:.3f}" for v in s["acc_base"]) + " |")
        lines.append(f"| {mode}, learning | " + " | ".join(f"{v:.3f}" for v in s["acc"]) + " |")
    return lines


def cost_lines(models: dict) -> list[str]:
    lines = ["| model | setting | classes | learn_unlabeled, us per input | compile after a chunk, ms | state bytes |",
             "|---|---|---|---|---|---|"]
    for model, splits in models.items():
        for setting in ("150-way", "per domain"):
            for mode, s in splits["test"][setting].items():
                k = 150 if setting == "150-way" else 15
                lines.append(f"| {model} | {setting}, {mode} | {k} | {s['us_per_input']:.0f} | "
                             f"{s['ms_per_compile']:.2f} | {s['state_bytes']:,} |")
    return lines


STUDY = """Every constant was chosen on CLINC150 **train**-split streams only (33 inputs per intent: 4,950 for 150-way, 495 per
domain; declared labels, chunks of 50, 3 seeds; the labelled examples of the mixed setting held out of the stream);
the test streams above were run once the method was fixed, except that the first test run (before the minimum
evidence guard) showed e5's 150-way cumulative gain at 200 inputs at -0.010, which the train streams reproduced
(-0.012) and which the guard was then chosen on train to remove. Earlier scratch designs, not rerun here: soft EM in
the few-shot learner's own statistics with the adapted model's posterior (the issue's probe) lost accuracy on e5;
the anchor taken from the adapted model instead of the zero-shot posterior fed on its own mistakes; the label
vectors as extra anchors of the check cost gain. The table is `--ablations`: the final method with one thing
changed at a time (rest: inputs 1,000-4,950 of the 150-way stream)."""


def ablation_table(ablations: dict) -> list[str]:
    """One row per variant: its train-stream figures per model (e5 / MiniLM in MODELS order)."""
    models = list(ablations)
    lines = ["Each row changes one thing of the method; figures are " + " / ".join(models) + ".", "",
             "| variant | 150-way: gain after 1,000 | 150-way: lowest cumulative gain | 150-way: ECE | per domain: gain "
             f"| {SUBSET}: gain (lowest) | 8 labelled, 150-way: gain (lowest) | 8 labelled, 150-way: compile, ms |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(name: str, setting: str, mode: str, f) -> str:
        vals = [ablations[m][name].get(setting, {}).get(mode) for m in models]
        return " / ".join(f(v) for v in vals) if all(v is not None for v in vals) else ""

    for name, *_ in ABLATIONS:
        d, lab = "declared", "declared + 8 labelled"
        lines.append("| " + " | ".join([
            name, cell(name, "150-way", d, lambda v: f"{v['rest_gain']:+.3f}"),
            cell(name, "150-way", d, lambda v: f"{v['min_gain']:+.3f}"),
            cell(name, "150-way", d, lambda v: f"{v['ece']:.3f}"),
            cell(name, "per domain", d, lambda v: f"{v['final_gain']:+.3f}"),
            cell(name, SUBSET, d, lambda v: f"{v['final_gain']:+.3f} ({v['min_gain']:+.3f})"),
            cell(name, "150-way", lab, lambda v: f"{v['final_gain']:+.3f} ({v['min_gain']:+.3f})"),
            cell(name, "150-way", lab, lambda v: f"{v['ms_per_compile']:.1f}")]) + " |")
    return lines


def guard_lines(ablations: dict) -> list[str]:
    """Each guard against the method without it, from the ablation runs (e5 / MiniLM)."""
    models = list(ablations)
    base = "the method (defaults)"

    def fig(name: str, setting: str, mode: str, key: str) -> str:
        return " / ".join(f"{ablations[m][name][setting][mode][key]:+.3f}" for m in models)

    d, lab = "declared", "declared + 8 labelled"
    binds = " / ".join(f"{ablations[m][base]['150-way'][lab]['anchor_check_binds']:.0%}" for m in models)
    ms = [" / ".join(f"{ablations[m][n]['150-way'][lab]['ms_per_compile']:.1f}" for m in models)
          for n in (base, "no anchor check")]

    def ece(name: str) -> str:
        return " / ".join(f"{ablations[m][name]['150-way'][d]['ece']:.3f}" for m in models)
    return [
        f"Figures are {' / '.join(models)}, train streams, 3 seeds, each guard removed alone.", "",
        "| guard | what it prevents | without it | what it costs |", "|---|---|---|---|",
        "| minimum evidence (`unlabeled_min_per_class` 2: nothing moves before 2 inputs per class on average, 300 "
        "for 150 classes) | prototypes moved onto one or two inputs each | 150-way lowest cumulative gain "
        f"{fig('no minimum evidence (unlabeled_min_per_class 0)', '150-way', d, 'min_gain')} (with it "
        f"{fig(base, '150-way', d, 'min_gain')}) | nothing learned in the first 2 K inputs: {SUBSET} gain "
        f"{fig(base, SUBSET, d, 'final_gain')} vs {fig('no minimum evidence (unlabeled_min_per_class 0)', SUBSET, d, 'final_gain')}"
        " without (its test streams are only 390 inputs long, so most of the gain is lost there) |",
        "| a share per class (`unlabeled_pseudo_count`) | classes the traffic does not bring moving onto their "
        f"neighbours' inputs | {SUBSET}: gain {fig('one share for all classes', SUBSET, d, 'final_gain')}, lowest "
        f"{fig('one share for all classes', SUBSET, d, 'min_gain')} | 150-way gain after 1,000 "
        f"{fig(base, '150-way', d, 'rest_gain')} vs {fig('one share for all classes', '150-way', d, 'rest_gain')}, "
        f"per domain {fig(base, 'per domain', d, 'final_gain')} vs "
        f"{fig('one share for all classes', 'per domain', d, 'final_gain')} |",
        "| drift limit (`unlabeled_max_share` 0.8) | a prototype leaving its label vector altogether | 150-way gain "
        f"after 1,000 {fig('no drift limit (unlabeled_max_share 1)', '150-way', d, 'rest_gain')} (CLINC streams "
        "do not drift) | none measurable |",
        "| class cap (`unlabeled_class_cap` 1000) | one class's history outweighing new traffic for ever | never "
        "reached on these streams (33 inputs per intent); a cap of 10 gives 150-way "
        f"{fig('class cap 10 (unlabeled_class_cap)', '150-way', d, 'rest_gain')} | none at 1000 |",
        "| anchor check (every labelled class mean keeps its unadapted class, else the adaptation is halved, up to "
        f"{MAX_HALVINGS} times, then off) | traffic overruling labelled examples | bound in {binds} of the chunks "
        "with 8 labelled examples per class (the labelled part already outweighs the zero-shot part there) | compile "
        f"{ms[0]} ms with it, {ms[1]} ms without (the few-shot fit dominates) |",
        "", f"The scale of the adapted scores (`unlabeled_scale_gain` {LearnerConfig().unlabeled_scale_gain:g}) is not "
        "a guard but keeps them calibrated: "
        f"150-way ECE {ece(base)} with it, {ece('no rescaling of the adapted scores (unlabeled_scale_gain 1)')} "
        "without.",
    ]


def protocol() -> str:
    """The protocol paragraphs of this module's docstring."""
    doc = __doc__ or ""
    return doc[doc.index("Protocol ("):].strip()


def reading(models: dict) -> list[str]:
    """The headline figures of the test streams, in words."""
    names = list(models)
    res = {m: models[m]["test"] for m in names}
    issue = [(st, mo) for st in ("150-way", "per domain") for mo in MODES]

    def per_model(f) -> str:
        return " / ".join(f(res[m]) for m in names)

    worst_declared = per_model(lambda r: f"{min(r[st]['declared']['min_gain'] for st, _ in issue):+.3f}")
    worst_mixed = per_model(lambda r: f"{min(r[st][MODES[1]]['min_gain'] for st, _ in issue):+.3f}")
    ece_max = per_model(lambda r: f"{max(r[st][mo]['ece'] for st, mo in issue):.3f}")
    return [
        f"In short ({' / '.join(names)}, test streams): 150-way with declared labels gains "
        f"{per_model(lambda r: format(r['150-way']['declared']['rest_gain'], '+.3f'))} over zero-shot after 1,000 "
        f"inputs ({per_model(lambda r: format(r['150-way']['declared']['final_gain'], '+.3f'))} over the whole "
        f"stream), per domain {per_model(lambda r: format(r['per domain']['declared']['final_gain'], '+.3f'))}; the "
        f"lowest cumulative gain at any checkpoint is {worst_declared} with declared labels and {worst_mixed} with 8 "
        f"labelled examples per class; the highest ECE of the adapted answers in these settings is {ece_max}. With "
        "8 labelled examples per class, learning from inputs changes almost nothing: the adapted zero-shot part "
        "weighs N0 / (N + N0) = 4 / 1,204 (150-way) or 4 / 124 (a domain) of the blend, so the labels decide (it "
        f"neither helps nor hurts). On {SUBSET} (390 inputs on the test split) the minimum-evidence guard keeps "
        "zero-shot for the first 300 inputs, hence the small gain there; the ECE bound is missed there by zero-shot "
        f"itself ({per_model(lambda r: format(r[SUBSET]['declared']['ece_base'], '.3f'))}; with learning "
        f"{per_model(lambda r: format(r[SUBSET]['declared']['ece'], '.3f'))}).",
    ]


def write_markdown(models: dict, goals: list, path: Path, seconds: float, ablations: dict) -> None:
    out = ["# Learning from classified inputs (issue 29)", "",
           "Generated by `bench/eval_unlabeled.py` (protocol in its docstring; the method in "
           "classifiers/fewshot/unlabeled.py, its constants in classifiers/fewshot/learner_config.py). Test-split streams of the CLINC150 slice (13 inputs per intent: "
           "1,950 for 150-way, 195 per domain, so the per-domain checkpoints are every chunk of 50), chunks of 50, each "
           f"answered before it is learned, {next(iter(models.values()))['test']['150-way']['declared']['seeds']} "
           "seeds. Accuracy figures are the accuracy so far at the stream's end (cumulative); gains are learning minus "
           "the same classifier without learning (zero-shot for declared labels), averaged over seeds (and domains).",
           "", f"![accuracy so far along the stream]({PLOT})", "", "## Protocol", "", protocol(), "",
           "## Goals (test streams)", "",
           "| goal | | measured |", "|---|---|---|"]
    out += [f"| {g} | {'MET' if ok else 'NOT MET'} | {m} |" for g, ok, m in goals]
    out += ["", *reading(models)]
    for model, splits in models.items():
        out += ["", f"## {model}", "", *results_table(splits["test"]), "",
                "Accuracy so far at each checkpoint, 150-way:", "", *curve_table(splits["test"], "150-way"), "",
                "Per domain (mean of the 10 domains):", "", *curve_table(splits["test"], "per domain")]
    out += ["", "## Cost (this machine, one thread)", "", *cost_lines(models), "",
            "State bytes are the whole few-shot state (full scatter, 591 KB at D = 384, and the class rows). Learning "
            "from inputs adds 8 + 8 D bytes per class to it (a float64 soft count and soft sum: 3,080 B at D = 384, "
            "49 KB for 16 classes, 462 KB for 150), whatever the traffic, and `inputs_learned` (one integer); no "
            "input is kept. The compile time with 8 labelled examples is the few-shot fit's, the same with and "
            "without learning (the anchor check's cost is in the ablation table)."]
    if ablations:
        out += ["", "## The guards and what they cost (train streams)", "", *guard_lines(ablations)]
    if any("train" in s for s in models.values()):
        out += ["", "## Train-split streams (where the constants were chosen)", ""]
        for model, splits in models.items():
            if "train" in splits:
                out += [f"{model}:", "", *results_table(splits["train"]), ""]
    if ablations:
        out += ["", "## How the method was chosen (train streams)", "", STUDY, "", *ablation_table(ablations)]
    out += ["", f"Run time {seconds:.0f} s."]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/text", help="CLINC150 folder (train.csv, test.csv, label_domains.json)")
    ap.add_argument("--out", default="docs/eval", help=f"where unlabeled.md and {PLOT} go")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--splits", default="test,train", help="test (reported) and/or train (the tuning streams)")
    ap.add_argument("--ablations", action="store_true", help="also the study of the constants (train streams)")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models: dict = {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
            models.setdefault(model, {})[split] = evaluate_model(model, Path(args.data), split, args.seeds)
    ablations = {m: run_ablations(m, Path(args.data), args.seeds) for m in models} if args.ablations else {}
    goals = check_goals(models) if all("test" in s for s in models.values()) else []
    if args.json:
        Path(args.json).write_text(json.dumps({"models": models, "ablations": ablations, "goals": goals,
                                               "args": vars(args)}, indent=1))
    if goals:
        plot(models, out / PLOT)
        write_markdown(models, goals, out / "unlabeled.md", time.time() - t0, ablations)
        for g, ok, m in goals:
            print(f"{'MET    ' if ok else 'NOT MET'} {g}: {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
