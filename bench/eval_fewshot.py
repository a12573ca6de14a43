"""Few-shot and zero-shot quality evaluation: writes docs/eval/report.md and one plot per model.

    PYTHONPATH=. .venv/bin/python bench/eval_fewshot.py --data ../shared/data/text --out docs/eval

What it measures, on the SAME cached embeddings (computed once through the real encoder code path,
``classifiers.embedding.engines.load_encoder(spec).encode``, under .cache/eval/):

* zero-shot prompts: label templates and (e5) label prefixes, the NLL-fitted score_scale, NLL / ECE;
* learning curves on a stream (a random permutation of the training split per seed) at 8, 16, ... and all
  examples: zero-shot (label names as words), our few-shot learner (classifiers/fewshot/learner.py; also without
  label prior and with opaque `cNN` label ids), full-batch logistic regression on all examples seen so far
  (C tuned by 5-fold CV on full training data), nearest class mean, and online passive-aggressive (PA-I)
  fed the same stream in batches of --batch-size with --num-iters passes per batch (Jina's learner);
* evaluation at k examples uses the test examples of the classes seen in the first k (the labels the
  few-shot classifier knows), and every method, zero-shot included, chooses among exactly those labels.

CLINC150 (--data): per domain (15-way, 10 domains, averaged) and one 150-way run (class limit raised).
Calibrated scores (issue 28): the single-label ECE protocol on CLINC (bench/eval_calibration.py) and multi-label
classification on GoEmotions (--goemotions, bench/eval_multilabel.py), with reliability diagrams; accuracies are
checked against the previous report's results.json (--baseline).
Any CSV with text,label columns: --csv train.csv [--test test.csv | split off --test-fraction].
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# This file is the runner (arguments and stages); each job it runs has a module of its own: the stream evaluation
# bench/fewshot_streams.py, the zero-shot prompt study bench/zeroshot_prompts.py, the learner's cost
# bench/fewshot_cost.py, the plots bench/fewshot_plots.py and the report bench/fewshot_report.py.
from bench import eval_calibration, eval_multilabel  # noqa: E402
from bench.evaluation import (  # noqa: E402
    CACHE_DIR,
    Split,
    Task,
    embed,
    get_spec,
    load_domains,
    read_csv,
    split_csv,
    tune_logreg_C,
)
from bench.fewshot_cost import class_scaling, learner_cost  # noqa: E402
from bench.fewshot_plots import plot_all_classes, plot_curves, plot_roc  # noqa: E402
from bench.fewshot_report import write_report  # noqa: E402
from bench.fewshot_streams import (  # noqa: E402
    OOS_AT,
    build_tasks,
    run_all_classes,
    run_curves,
    run_oos_all_labels,
    weight_sensitivity,
)
from bench.zeroshot_prompts import prompt_study, recipe_study, six_prompt_check  # noqa: E402

if TYPE_CHECKING:
    from classifiers.fewshot.learner_config import LearnerConfig

MODELS = ("multilingual-e5-small", "all-MiniLM-L6-v2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/text", help="CLINC150 folder (train.csv, test.csv, label_domains.json)")
    ap.add_argument("--csv", help="instead of CLINC: any CSV with text,label columns (training split)")
    ap.add_argument("--test", help="test CSV for --csv (default: stratified split of --csv)")
    ap.add_argument("--test-fraction", type=float, default=0.3, help="test share when --csv has no --test")
    ap.add_argument("--out", default="docs/eval", help="where report.md, plots and results.json go")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated registry model names")
    ap.add_argument("--seeds", type=int, default=5, help="stream permutations per task (domain runs)")
    ap.add_argument("--seeds-all", type=int, default=3, help="stream permutations for the all-label (150-way) run")
    ap.add_argument("--domains", default="all", help="comma-separated CLINC domains, or 'all', or 'none'")
    ap.add_argument("--no-all-labels", action="store_true", help="skip the run over all labels (150-way on CLINC)")
    ap.add_argument("--max-classes", type=int, default=None,
                    help="class limit for the all-label run (default: its number of classes; the state budget "
                    "is raised with it so the learner keeps its full covariance)")
    ap.add_argument("--checkpoints", default="8,16,32,64,128,256,all")
    ap.add_argument("--batch-size", type=int, default=8, help="stream batch size (PA and learner updates)")
    ap.add_argument("--num-iters", type=int, default=10, help="Jina num_iters: PA passes per batch; learner weight num_iters/10")
    ap.add_argument("--skip-prompts", action="store_true", help="skip the zero-shot prompt study")
    ap.add_argument("--skip-all-classes", action="store_true",
                    help="skip the all-classes protocol (declared labels) and the out-of-scope evaluation")
    ap.add_argument("--skip-calibration", action="store_true", help="skip the single-label ECE protocol (CLINC)")
    ap.add_argument("--goemotions", default="../shared/data/goemotions",
                    help="GoEmotions folder for the multi-label evaluation, or 'none'")
    ap.add_argument("--ml-seeds", type=int, default=3, help="stream permutations of the multi-label evaluation")
    ap.add_argument("--baseline", default=None,
                    help="results.json whose accuracies must not change (default: the one in --out, read before writing)")
    return ap.parse_args(argv)


@dataclass
class Data:
    """The data every model is evaluated on, read once: the two splits, how the report names them, the CLINC
    domains (None: no per-domain runs) and the --checkpoints labels, which fix where each stream is scored."""

    train: Split
    test: Split
    dataset: str
    domains: dict[str, list[str]] | None
    ck_labels: list[str]

    def checkpoints(self, n: int) -> list[int]:
        """The stream sizes at which a task of n training examples is scored (``all`` = n)."""
        every = {n} if "all" in self.ck_labels else set()
        return sorted({min(n, int(c)) for c in self.ck_labels if c != "all"} | every)

    def labels_for(self, ks: list[int], n: int) -> list[str]:
        """The report's column labels of those sizes: ``all (n)`` for the whole split."""
        return [f"all ({k})" if k == n and "all" in self.ck_labels else str(k) for k in ks]


def load_data(args: argparse.Namespace) -> Data:
    """CLINC150 from --data (with its domains unless --domains none), or any CSV pair (--csv, --test or a split)."""
    domains = None
    if args.csv:
        train = read_csv(args.csv)
        test = read_csv(args.test) if args.test else None
        if test is None:
            train, test = split_csv(train, args.test_fraction)
        dataset = f"`{args.csv}`" + (f" / `{args.test}`" if args.test else f" (stratified {args.test_fraction:.0%} test split)")
    else:
        train, test = read_csv(Path(args.data) / "train.csv"), read_csv(Path(args.data) / "test.csv")
        dataset = f"CLINC150 slice `{args.data}` (33 train / 13 test per intent)"
        if args.domains != "none":
            domains = load_domains(Path(args.data) / "label_domains.json")
            if args.domains != "all":
                domains = {d: domains[d] for d in args.domains.split(",")}
    return Data(train, test, dataset, domains, args.checkpoints.split(","))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from classifiers.fewshot.learner_config import LearnerConfig

    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    data = load_data(args)
    report: dict = {"dataset": data.dataset, "models": {}, "args": vars(args)}
    baseline_path = Path(args.baseline) if args.baseline else out / "results.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
    for model in models:
        report["models"][model] = evaluate_model(model, args, data, out)

    report["cost_1024"] = learner_cost(1024, 30.0, LearnerConfig())
    report["accuracy_check"] = {"baseline": str(baseline_path) if baseline else None,
                                "rows": eval_calibration.accuracy_check(report["models"], baseline)}
    report["seconds"] = time.time() - t0
    # the run's results as computed (numpy arrays kept), so the report's text can be rendered again without a rerun:
    # bench.fewshot_report.write_report(pickle.load(open(path, "rb")), out)
    (CACHE_DIR / "last_report.pkl").write_bytes(pickle.dumps(report))
    write_report(report, out)
    print(f"wrote {out / 'report.md'} in {report['seconds']:.0f} s")
    return 0


def evaluate_model(model: str, args: argparse.Namespace, data: Data, out: Path) -> dict:
    """Every stage for one model, in order, into the model's part of the report; its plots are written too."""
    from classifiers.fewshot.learner_config import LearnerConfig

    spec = get_spec(model)
    info: dict = {"registry": {"label_prefix": spec.label_prefix, "label_template": spec.label_template,
                               "input_prefix": spec.input_prefix, "score_scale": spec.score_scale}}
    print(f"== {model}: embeddings (cached under .cache/eval)", flush=True)
    embed(model, data.train.texts + data.test.texts, "input")
    oos_path = Path(args.data) / "oos_test.csv" if not args.csv else None
    Xoos = None
    if oos_path is not None and oos_path.exists():
        Xoos = embed(model, read_csv(oos_path).texts, "input").astype(np.float64)
    if not args.skip_prompts:
        info["recipes"] = recipe_study(model, data.train, data.test, data.domains)
        info["prompts"] = prompt_study(model, data.train, data.test, data.domains)
        info["six_prompt"] = six_prompt_check(model)
    runs: dict = {}
    tasks, ks_domains, C_domains = [], [], None
    if data.domains:
        tasks, ks_domains, C_domains = domain_stage(model, spec, args, data, Xoos, info, runs)
    task, ks_all, cfg_all = None, [], None
    if not args.no_all_labels:
        task, ks_all, cfg_all = all_label_stage(model, spec, args, data, Xoos, C_domains, info, runs)
    info["runs"] = runs
    issue28_evaluations(info, args, model, spec, tasks, task, ks_domains, ks_all, cfg_all, out)
    info["cost"] = learner_cost(spec.dim or 384, spec.score_scale, LearnerConfig())
    info["class_scaling"] = class_scaling(spec.dim or 384, spec.score_scale)
    write_plots(model, info, runs, out)
    return info


def domain_stage(model: str, spec, args: argparse.Namespace, data: Data, Xoos, info: dict,
                 runs: dict) -> tuple[list[Task], list[int], float]:
    """The per-domain runs (one task per CLINC domain): learning curves into ``runs``, the all-classes protocol
    and the num_iters sensitivity into ``info``. Returns the tasks, their checkpoints and the median tuned C
    (the all-label run reuses it: cross-validating 150-way fits is too slow)."""
    from tqdm import tqdm

    from classifiers.fewshot.learner_config import LearnerConfig

    domains = data.domains or {}
    tasks = build_tasks(model, data.train, data.test, domains, opaque_width=2)
    for t in tqdm(tasks, desc=f"{model} tune logreg C", unit="task"):
        t.C = tune_logreg_C(t.Xtr, t.ytr)
    C_domains = float(np.median([t.C for t in tasks]))
    n = max(len(t.ytr) for t in tasks)
    ks = data.checkpoints(n)
    seeds = list(range(args.seeds))
    runs[f"per domain ({len(tasks)} domains x {len(domains[next(iter(domains))])}-way)"] = dict(
        res=run_curves(tasks, seeds, ks, score_scale=spec.score_scale, batch_size=args.batch_size,
                       num_iters=args.num_iters, learner_config=LearnerConfig(), desc=f"{model} domains"),
        ks=ks, labels=data.labels_for(ks, n), C=[t.C for t in tasks], seeds=args.seeds, config=LearnerConfig())
    if not args.skip_all_classes:
        ks0 = [0] + ks
        info["all_classes"] = dict(
            **run_all_classes(tasks, seeds, ks0, spec=spec, Xoos=Xoos, batch_size=args.batch_size,
                              num_iters=args.num_iters, learner_config=LearnerConfig(), desc=f"{model} all-classes"),
            ks=ks0, labels=["0"] + data.labels_for(ks, n), seeds=args.seeds)
    info["weight_sensitivity"] = dict(res=weight_sensitivity(tasks, seeds, ks, [1, 10, 30, 100], args.batch_size),
                                      labels=data.labels_for(ks, n))
    return tasks, ks, C_domains


def all_label_stage(model: str, spec, args: argparse.Namespace, data: Data, Xoos, C_domains: float | None,
                    info: dict, runs: dict) -> tuple[Task, list[int], LearnerConfig]:
    """The run over all labels at once (150-way on CLINC): its learning curves into ``runs`` and its out-of-scope
    detection into ``info``. The class limit and state budget are raised so the learner keeps its full
    covariance. Returns the task, its checkpoints and the learner config."""
    from classifiers.fewshot.learner import _state_bytes
    from classifiers.fewshot.learner_config import LearnerConfig

    all_names = sorted(set(data.train.labels))
    task = build_tasks(model, data.train, data.test, {"all": all_names}, opaque_width=3)[0]
    # C: the median of the per-domain tuned values (cross-validating 150-way fits is too slow here)
    task.C = C_domains if data.domains else tune_logreg_C(task.Xtr, task.ytr, folds=3)
    K = len(all_names)
    max_classes = args.max_classes or max(K, 16)
    cfg = LearnerConfig(max_classes=max_classes,
                        max_state_bytes=max(1_000_000, _state_bytes(task.Xtr.shape[1], max_classes, True)))
    n = len(task.ytr)
    ks = data.checkpoints(n)
    runs[f"all {K} labels"] = dict(
        res=run_curves([task], list(range(args.seeds_all)), ks, score_scale=spec.score_scale,
                       batch_size=args.batch_size, num_iters=args.num_iters, learner_config=cfg,
                       desc=f"{model} all {K}"),
        ks=ks, labels=data.labels_for(ks, n), C=[task.C], seeds=args.seeds_all, n=n, config=cfg)
    if Xoos is not None and not args.skip_all_classes:
        at = [0] + [k for k in OOS_AT if 0 < k < n] + [n]
        info["oos_all_labels"] = dict(
            **run_oos_all_labels(task, list(range(args.seeds_all)), at, spec=spec, Xoos=Xoos,
                                 batch_size=args.batch_size, num_iters=args.num_iters, learner_config=cfg,
                                 desc=f"{model} OOS all {K}"), classes=K)
    return task, ks, cfg


def issue28_evaluations(info: dict, args, model: str, spec, tasks: list[Task], task: Task | None,
                        ks_domains: list[int], ks_all: list[int], cfg_all, out: Path) -> None:
    """Issue 28's evaluations of one model into ``info``: single-label calibration on CLINC (the domain tasks and
    the all-label task just run), multi-label on GoEmotions, and the model's reliability diagrams."""
    from classifiers.fewshot.learner_config import LearnerConfig

    if not args.skip_calibration and not args.csv and (tasks or task is not None):
        info["calibration"] = eval_calibration.run(
            tasks, task, spec=spec, seeds=args.seeds, seeds_all=args.seeds_all, checkpoints=ks_domains,
            checkpoints_all=ks_all, batch_size=args.batch_size, num_iters=args.num_iters,
            config_domains=LearnerConfig(), config_all=cfg_all)
    if args.goemotions != "none":
        info["multilabel"] = eval_multilabel.run(model, spec, args.goemotions, seeds=args.ml_seeds,
                                                 batch_size=args.batch_size)
    eval_calibration.plot_reliability(model, info, out / f"reliability_{model}.png")



def write_plots(model: str, info: dict, runs: dict, out: Path) -> None:
    """One model's PNGs beside the report; the ROC curves' raw scores are dropped afterwards (too large for
    results.json, and the plot is what the report shows of them)."""
    plot_curves(model, runs, out / f"fewshot_{model}.png")
    if "all_classes" in info:
        plot_all_classes(model, info["all_classes"], out / f"declared_{model}.png")
        if info["all_classes"]["roc"]:
            plot_roc(model, info["all_classes"], out / f"oos_roc_{model}.png")
        info["all_classes"].pop("roc")


if __name__ == "__main__":
    raise SystemExit(main())
