"""The few-shot stream evaluation of bench/eval_fewshot.py: per-seed streams through every method, averaged over
the tasks.

One stream step (bench.evaluation.run_stream and its kin) scores one task on one permutation; this module turns
label groups into tasks on the cached embeddings and averages those steps over tasks and seeds into the arrays the
report renders: the learning curves, the num_iters sensitivity, the all-classes protocol and the out-of-scope
metrics. It owns the seeding (``default_rng([seed, task index])``), so every method of a run sees the same streams.
"""
from __future__ import annotations

import numpy as np

from bench.evaluation import (
    ALL_METHODS,
    METHODS,
    Task,
    embed,
    embed_labels,
    get_spec,
    run_learner_only,
    run_stream,
    run_stream_all_classes,
)
from bench.zeroshot_prompts import label_texts

OOS_AT = (0, 16, 64)  # plus "all"


def build_tasks(model: str, train, test, groups: dict[str, list[str]], opaque_width: int) -> list[Task]:
    """One Task per label group, embeddings through the registry's prompts for this model."""
    spec = get_spec(model)
    X = embed(model, train.texts + test.texts, "input")
    Xtr, Xte = X[: len(train.texts)].astype(np.float64), X[len(train.texts):].astype(np.float64)
    ytr_all, yte_all = np.array(train.labels), np.array(test.labels)
    all_names = sorted({n for g in groups.values() for n in g})
    Lw = dict(zip(all_names, embed_labels(model, all_names), strict=True))  # the registry's zero-shot label recipe
    max_k = max(len(g) for g in groups.values())
    ids = [f"c{j:0{opaque_width}d}" for j in range(max_k)]
    Lo = embed(model, label_texts(spec.label_template, ids, words=False), "label", progress=False)
    tasks = []
    for gname, names in groups.items():
        index = {n: j for j, n in enumerate(names)}
        mtr, mte = np.isin(ytr_all, names), np.isin(yte_all, names)
        tasks.append(Task(
            name=gname, names=list(names),
            Xtr=Xtr[mtr], ytr=np.array([index[n] for n in ytr_all[mtr]]),
            Xte=Xte[mte], yte=np.array([index[n] for n in yte_all[mte]]),
            L=np.stack([Lw[n] for n in names]).astype(np.float64), L_opaque=Lo[: len(names)].astype(np.float64),
        ))
    return tasks


# -------------------------------------------------------------------------------------- curves
def run_curves(tasks: list[Task], seeds: list[int], checkpoints: list[int], *, score_scale: float,
               batch_size: int, num_iters: int, learner_config, desc: str) -> dict:
    """{metric: {method: (n_seeds, n_checkpoints)}} averaged over tasks within each seed."""
    from tqdm import tqdm

    res = {m: {k: np.zeros((len(seeds), len(checkpoints))) for k in METHODS} for m in ("acc", "f1", "nll", "ece")}
    res["classes"] = np.zeros((len(seeds), len(checkpoints)))
    res["coverage"] = np.zeros((len(seeds), len(checkpoints)))
    with tqdm(total=len(seeds) * len(tasks), desc=desc, unit="run") as bar:
        for si, seed in enumerate(seeds):
            for ti, task in enumerate(tasks):
                perm = np.random.default_rng([seed, ti]).permutation(len(task.ytr))
                out = run_stream(task, perm, checkpoints, score_scale=score_scale, batch_size=batch_size,
                                 num_iters=num_iters, learner_config=learner_config, pa_seed=seed)
                for metric in ("acc", "f1", "nll", "ece"):
                    for method in METHODS:
                        res[metric][method][si] += out[metric][method] / len(tasks)
                res["classes"][si] += out["classes"] / len(tasks)
                res["coverage"][si] += out["coverage"] / len(tasks)
                bar.update(1)
    return res


def weight_sensitivity(tasks: list[Task], seeds: list[int], checkpoints: list[int], num_iters: list[int],
                       batch_size: int) -> dict:
    """Accuracy of the learner alone for several Jina num_iters values (weight = num_iters / 10)."""
    out = {}
    for it in num_iters:
        for prior in (True, False):
            acc = np.zeros((len(seeds), len(checkpoints)))
            for si, seed in enumerate(seeds):
                for ti, task in enumerate(tasks):
                    perm = np.random.default_rng([seed, ti]).permutation(len(task.ytr))
                    acc[si] += run_learner_only(task, perm, checkpoints, weight=it / 10, batch_size=batch_size,
                                                prior=prior) / len(tasks)
            out[f"{it}|{int(prior)}"] = acc
    return out


# ------------------------------------------------------------------------- all-classes protocol, OOS
def run_all_classes(tasks: list[Task], seeds: list[int], checkpoints: list[int], *, spec, Xoos, batch_size: int,
                    num_iters: int, learner_config, desc: str) -> dict:
    """All-classes protocol (bench.evaluation.run_stream_all_classes) averaged over tasks per seed, plus OOS
    metrics (AUROC, OOS recall at 95% in-scope recall, in-scope false-alarm rate at a 5% target) per score,
    averaged over tasks and seeds; seed 0's pooled scores are kept for the ROC plot."""
    from tqdm import tqdm

    oos_at = tuple(k for k in OOS_AT if k in checkpoints) + (checkpoints[-1],)
    acc = {m: np.zeros((len(seeds), len(checkpoints))) for m in ALL_METHODS}
    oos: dict = {}
    pooled: dict = {}
    with tqdm(total=len(seeds) * len(tasks), desc=desc, unit="run") as bar:
        for si, seed in enumerate(seeds):
            for ti, task in enumerate(tasks):
                perm = np.random.default_rng([seed, ti]).permutation(len(task.ytr))
                out = run_stream_all_classes(task, perm, checkpoints, spec=spec, Xoos=Xoos, oos_at=oos_at,
                                             batch_size=batch_size, num_iters=num_iters,
                                             learner_config=learner_config, pa_seed=seed)
                for m in ALL_METHODS:
                    acc[m][si] += out["acc"][m] / len(tasks)
                _collect_oos(out["oos"], oos, pooled if si == 0 else None)
                bar.update(1)
    oos_mean, roc_data = _oos_summary(oos, pooled)
    return {"acc": acc, "oos": oos_mean, "roc": roc_data, "oos_at": list(oos_at)}


def _collect_oos(scores_at: dict, oos: dict, pooled: dict | None) -> None:
    """Append one run's OOS metrics per checkpoint and score to ``oos``: AUROC, OOS recall at 95% in-scope
    recall and, for the served scores, the in-scope false-alarm rate and OOS recall of the served rule at a 5%
    target; keep the raw scores in ``pooled`` (ROC plots)."""
    from classifiers.zeroshot.oos import auroc, recall_at_inscope_recall, threshold

    t = threshold(0.05)
    for k, scores in scores_at.items():
        for name, (si_, so_) in scores.items():
            row = oos.setdefault(str(k), {}).setdefault(name, [])
            row.append([auroc(si_, so_), recall_at_inscope_recall(si_, so_)]
                       + ([float(np.mean(si_ > t)), float(np.mean(so_ > t))]
                          if name.startswith(("ours", "max cosine (ours")) else [np.nan, np.nan]))
            if pooled is not None:
                pi, po = pooled.setdefault(str(k), {}).setdefault(name, ([], []))
                pi.append(si_), po.append(so_)


def _oos_summary(oos: dict, pooled: dict) -> tuple[dict, dict]:
    """The mean of each checkpoint's and score's metrics over runs (the served-rule columns stay NaN for scores
    without a served rule), and the pooled scores joined per checkpoint and score for the ROC plot."""
    oos_mean = {k: {n: np.nanmean(np.array(v), 0).tolist() if not np.all(np.isnan(np.array(v)[:, 2:]))
                    else np.array(v)[:, :2].mean(0).tolist() + [np.nan, np.nan] for n, v in d.items()}
                for k, d in oos.items()}
    roc_data = {k: {n: (np.concatenate(a), np.concatenate(b)) for n, (a, b) in d.items()} for k, d in pooled.items()}
    return oos_mean, roc_data


def run_oos_all_labels(task: Task, seeds: list[int], oos_at: list[int], *, spec, Xoos, batch_size: int,
                       num_iters: int, learner_config, desc: str) -> dict:
    """150-way out-of-scope detection: one classifier with all of ``task``'s labels declared, its stream cut at
    ``oos_at`` (0 = zero-shot), metrics averaged over seeds (bench.evaluation.run_stream_oos)."""
    from tqdm import tqdm

    from bench.evaluation import run_stream_oos

    oos: dict = {}
    pooled: dict = {}
    for si, seed in enumerate(tqdm(seeds, desc=desc, unit="seed")):
        perm = np.random.default_rng([seed, 150]).permutation(len(task.ytr))
        out = run_stream_oos(task, perm, tuple(oos_at), spec=spec, Xoos=Xoos, batch_size=batch_size,
                             num_iters=num_iters, learner_config=learner_config)
        _collect_oos(out, oos, pooled if si == 0 else None)
    oos_mean, _ = _oos_summary(oos, pooled)
    return {"oos": oos_mean, "oos_at": list(oos_at), "seeds": len(seeds)}
