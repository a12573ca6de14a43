"""Multi-label classification and its calibration on GoEmotions (issue 28).

Called by bench/eval_fewshot.py (``--goemotions``), which writes the section and the summary rows into
docs/eval/report.md.

Data (``../shared/data/goemotions/``, SOURCE.md): GoEmotions' dev split, 5,426 Reddit comments, 28 emotions, 1-4
labels each. **Split, fixed and stated:** ``default_rng(0).permutation(5426)``; the first 40 % (2,170 comments) are
the test part, the other 3,256 the training stream (both kept in file order). It is the split of issue 28's study,
so the catalog's zero-shot ``multi_label_threshold`` (0.125) was fitted on this training part: nothing reported
here was fitted on the test part, except the logistic-regression bound, which is an upper bound *because* its
grid is chosen on the test part.

What is measured, for each model, on the test part:

* **zero-shot**: each label's score is its calibrated share ``softmax(score_scale x cos)`` over all 28 labels (the
  service's zero-shot multi-label rule); ``predicted_labels`` = every label whose share reaches the catalog's
  threshold. Against "top-1 label only" (the argmax, what a single-label service answers). The threshold refitted
  here on the training part (``classifiers.zeroshot.calibrate.fit_multi_label_threshold``) is shown beside it.
* **few-shot**: the learner as served (``LearnerConfig(max_classes=28)``: the class limit raised, Jina's 16 being
  too few), fed the training stream in the order ``default_rng([seed, 2828])`` in batches of 8 with weight 1,
  each comment with all its labels (a string when it has one, a list when several: one classifier mixing both
  forms, as ``/v1/train`` allows), label vectors for new labels. At 64 / 256 / 1,024 / all examples its learned
  per-label cuts (``LinearPredictor.multi_label(logits, None)``), fitted test-then-train from its own stream,
  against top-1 only and against **one-vs-rest logistic regression** on the same embeddings refitted on the same
  examples: its best macro-F1 (and, separately, best micro-F1) over C in {0.1, 1, 10} x class weights {none,
  balanced} x one global threshold in 0.05..0.95, chosen on the test part (the upper bound).
* **calibration**: multi-label ECE (each label's probability against whether it applies, all text x label pairs,
  and only the pairs with probability >= 0.1, since the near-zero pairs dominate the pooled figure) and
  single-label ECE (the top label's score against whether it is one of the comment's labels); 10 bins.

Targets (issue 28): few-shot macro-F1 >= 0.95 x the LR bound from 1,024 examples on; zero-shot micro-F1 above
top-1 only. Nothing here imports Ray.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.eval_calibration import reliability
from bench.evaluation import embed, embed_labels
from classifiers.zeroshot.calibrate import ece10, fit_multi_label_threshold
from classifiers.zeroshot.scoring import softmax

TEST_FRACTION = 0.4
SPLIT_SEED = 0
STREAM_SEED = 2828  # the stream of seed s is default_rng([s, STREAM_SEED]).permutation(training part)
CHECKPOINTS = (64, 256, 1024, None)  # None: all of the training stream
LR_C = (0.1, 1.0, 10.0)
LR_CLASS_WEIGHT = (None, "balanced")
LR_THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)
RATIO_TARGET = 0.95  # few-shot macro-F1 / LR bound, from RATIO_FROM examples on
RATIO_FROM = 1024
HIGH_Q = 0.1  # the multi-label ECE is also reported on the pairs with a probability at least this


# --------------------------------------------------------------------------------------------- data
@dataclass
class GoEmotions:
    """The embedded data set and its fixed split: ``Y`` (n, 28) bool, ``L`` (28, D) label vectors (registry recipe)."""

    names: list[str]
    X: np.ndarray
    Y: np.ndarray
    L: np.ndarray
    train: np.ndarray  # row indices of the training stream, in file order
    test: np.ndarray  # row indices of the test part, in file order


def split(n: int, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, test rows): a seeded permutation, its first ``test_fraction`` to the test part."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def read(data_dir: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(label names, texts, Y) from ``emotions.txt`` and ``dev.tsv`` (text, comma-separated label ids, id)."""
    d = Path(data_dir)
    names = (d / "emotions.txt").read_text(encoding="utf-8").split("\n")
    texts, rows = [], []
    with open(d / "dev.tsv", encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row[0])
            y = np.zeros(len(names), bool)
            y[[int(t) for t in row[1].split(",")]] = True
            rows.append(y)
    return names, texts, np.array(rows)


def load(model: str, data_dir: str | Path) -> GoEmotions:
    """Embed the comments and the label names through the model's own recipe (cached like the rest of the eval)."""
    names, texts, Y = read(data_dir)
    X = embed(model, texts, "input").astype(np.float64)
    train, test = split(len(texts))
    return GoEmotions(names, X, Y, embed_labels(model, names), train, test)


# ------------------------------------------------------------------------------------------ metrics
def micro_f1(Y: np.ndarray, P: np.ndarray) -> float:
    """Micro-F1 of bool predictions ``P`` against bool truth ``Y`` (n, K), all pairs pooled."""
    den = float(Y.sum() + P.sum())
    return 2.0 * float((Y & P).sum()) / den if den else 0.0


def macro_f1(Y: np.ndarray, P: np.ndarray) -> float:
    """Mean over the labels that occur in ``Y`` of each label's F1 (a label never predicted scores 0)."""
    tp = (Y & P).sum(0).astype(float)
    den = (Y.sum(0) + P.sum(0)).astype(float)
    f = np.divide(2.0 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return float(f[Y.sum(0) > 0].mean())


def top1(S: np.ndarray) -> np.ndarray:
    """The 'top-1 label only' answer: a bool (n, K) with each row's argmax."""
    P = np.zeros(S.shape, bool)
    P[np.arange(len(S)), S.argmax(1)] = True
    return P


def scores(Y: np.ndarray, P: np.ndarray) -> dict:
    return {"micro": micro_f1(Y, P), "macro": macro_f1(Y, P), "labels": float(P.sum(1).mean()),
            "empty": float((P.sum(1) == 0).mean())}


def calibration(Y: np.ndarray, Q: np.ndarray, single: np.ndarray) -> dict:
    """Multi-label ECE of the label probabilities ``Q`` (all pairs; pairs with q >= 0.1) and single-label ECE of
    the single-label distribution ``single`` (its top score against whether the top label applies)."""
    high = Q >= HIGH_Q
    hit = Y[np.arange(len(Y)), single.argmax(1)]
    return {"ece_ml": ece10(Q, Y), "ece_ml_high": ece10(Q[high], Y[high]) if high.any() else float("nan"),
            "ece_single": ece10(single.max(1), hit), "acc_single": float(hit.mean()),
            "conf_single": float(single.max(1).mean())}


# ----------------------------------------------------------------------------------------- zero-shot
def zero_shot(g: GoEmotions, spec) -> dict:
    """The zero-shot multi-label rule on the test part, at the catalog's threshold; the threshold refitted on the
    training part for comparison (what ``python -m classifiers.zeroshot.calibrate`` would print)."""
    P_tr = softmax(spec.score_scale * (g.X[g.train] @ g.L.T))
    refit, _ = fit_multi_label_threshold(P_tr, g.Y[g.train])
    P = softmax(spec.score_scale * (g.X[g.test] @ g.L.T))
    Y = g.Y[g.test]
    t = spec.multi_label_threshold if spec.multi_label_threshold is not None else refit
    return {"score_scale": spec.score_scale, "threshold": t, "threshold_from": (
                "catalog" if spec.multi_label_threshold is not None else "refitted on the training part"),
            "threshold_refit_on_train": refit, "rule": scores(Y, P >= t),
            "rule_at_refit": scores(Y, P >= refit), "top1": scores(Y, top1(P)), **calibration(Y, P, P),
            "reliability_ml": reliability(P, Y), "reliability_single": reliability(P.max(1), Y[np.arange(len(Y)), P.argmax(1)])}


# ------------------------------------------------------------------------------------------ few-shot
def _labels_of(row: np.ndarray, names: list[str]) -> str | list[str]:
    """A comment's labels as ``/v1/train`` takes them: a string for one label, a list for several."""
    labs = [names[j] for j in np.flatnonzero(row)]
    return labs[0] if len(labs) == 1 else labs


def evaluate_predictor(pred, g: GoEmotions) -> dict:
    """A compiled few-shot predictor on the test part: its learned multi-label answer, top-1 only, and calibration.
    Labels the classifier does not know yet get probability 0 and are never predicted."""
    cols = np.array([g.names.index(n) for n in pred.labels])
    X, Y = g.X[g.test], g.Y[g.test]
    z = pred.decision_function(X)
    Q = np.zeros(Y.shape)
    Q[:, cols] = pred.label_probs(z)
    S = np.zeros(Y.shape)
    S[:, cols] = pred.predict_proba(X)
    learned = pred.multi_label(z, None)
    P = np.zeros(Y.shape, bool)
    if learned is not None:
        P[:, cols] = learned
    return {"rule": scores(Y, P), "learned_cuts": learned is not None, "top1": scores(Y, top1(S)),
            "classes": len(cols), **calibration(Y, Q, S),
            "reliability_ml": reliability(Q, Y), "reliability_single": reliability(S.max(1), Y[np.arange(len(Y)), S.argmax(1)])}


def few_shot_stream(g: GoEmotions, spec, perm: np.ndarray, checkpoints: list[int], batch_size: int = 8) -> dict:
    """{k: evaluate_predictor(...)} along one stream of the training part (``perm`` indexes ``g.train``)."""
    from classifiers.fewshot.learner import FewShotLearner
    from classifiers.fewshot.learner_config import LearnerConfig

    lrn = FewShotLearner(g.X.shape[1], score_scale=spec.score_scale,
                         config=LearnerConfig(max_classes=max(len(g.names), 16)))
    rows = g.train[perm]
    seen: set[int] = set()
    out, pos = {}, 0
    for k in checkpoints:
        while pos < k:
            sel = rows[pos : min(pos + batch_size, k)]
            pos += len(sel)
            new = {int(j) for j in np.flatnonzero(g.Y[sel].any(0))} - seen
            seen |= new
            lrn.update(g.X[sel], [_labels_of(r, g.names) for r in g.Y[sel]], weight=1.0,
                       label_vectors={g.names[j]: g.L[j] for j in new})
        out[k] = evaluate_predictor(lrn.compile(), g)
    return out


def lr_bound(Xtr: np.ndarray, Ytr: np.ndarray, Xte: np.ndarray, Yte: np.ndarray) -> dict:
    """One-vs-rest logistic regression on the same embeddings: its best macro-F1 and best micro-F1 on the test part
    over C x class weight x one global threshold, and where each was reached. A label with no positive (or no
    negative) example yet predicts its training rate. Inputs are centred (only the unpenalised intercept changes;
    lbfgs converges much faster), and each label's fits are warm-started along C."""
    from sklearn.linear_model import LogisticRegression

    c = Xtr.mean(0)
    best = {"macro": -1.0, "micro": -1.0}
    for cw in LR_CLASS_WEIGHT:
        probs = {C: np.zeros(Yte.shape) for C in LR_C}
        for j in range(Ytr.shape[1]):
            yj = Ytr[:, j]
            if yj.all() or not yj.any():
                for C in LR_C:
                    probs[C][:, j] = float(yj.mean())
                continue
            clf = LogisticRegression(max_iter=1000, class_weight=cw, warm_start=True)
            for C in LR_C:
                probs[C][:, j] = clf.set_params(C=C).fit(Xtr - c, yj).predict_proba(Xte - c)[:, 1]
        for C in LR_C:
            for t in LR_THRESHOLDS:
                P = probs[C] >= t
                for metric, value in (("macro", macro_f1(Yte, P)), ("micro", micro_f1(Yte, P))):
                    if value > best[metric]:
                        best[metric], best[f"{metric}_at"] = value, {"C": C, "class_weight": cw, "threshold": float(t)}
    return best


def run(model: str, spec, data_dir: str | Path, *, seeds: int = 3, batch_size: int = 8) -> dict:
    """The whole multi-label evaluation of one model: zero-shot, and few-shot and the LR bound over ``seeds``
    streams. The LR bound on all examples is the same for every stream (same examples, deterministic fit): once."""
    from tqdm import tqdm

    g = load(model, data_dir)
    n = len(g.train)
    ks = [n if k is None else min(k, n) for k in CHECKPOINTS]
    labels = ["all" if k == n else str(k) for k in ks]
    out: dict = {"split": {"train": n, "test": len(g.test), "labels": len(g.names), "test_fraction": TEST_FRACTION,
                           "split_seed": SPLIT_SEED}, "checkpoints": labels, "zero_shot": zero_shot(g, spec),
                 "few_shot": [], "lr": []}
    lr_all = None
    for seed in tqdm(range(seeds), desc=f"{model} GoEmotions", unit="seed"):
        perm = np.random.default_rng([seed, STREAM_SEED]).permutation(n)
        res = few_shot_stream(g, spec, perm, ks, batch_size)
        out["few_shot"].append({lab: res[k] for lab, k in zip(labels, ks, strict=True)})
        lr = {}
        for lab, k in zip(labels, ks, strict=True):
            if k == n and lr_all is not None:
                lr[lab] = lr_all
                continue
            rows = g.train[perm[:k]]
            lr[lab] = lr_bound(g.X[rows], g.Y[rows], g.X[g.test], g.Y[g.test])
            if k == n:
                lr_all = lr[lab]
        out["lr"].append(lr)
    return out


# ------------------------------------------------------------------------------------- summary, report
def _mean(runs: list[dict], lab: str, *path: str) -> float:
    """The mean over seeds of ``run[lab][path...]``."""
    vals = []
    for r in runs:
        v = r[lab]
        for p in path:
            v = v[p]
        vals.append(float(v))
    return float(np.mean(vals))


def summary(ml: dict) -> dict:
    """{checkpoint: means over seeds}: the few-shot rule, top-1 only, the LR bound, the ratios and the ECEs."""
    out = {}
    for lab in ml["checkpoints"]:
        fs, lr = ml["few_shot"], ml["lr"]
        row = {f"{who}_{m}": _mean(fs, lab, who, m) for who in ("rule", "top1") for m in ("micro", "macro")}
        row.update({f"lr_{m}": _mean(lr, lab, m) for m in ("micro", "macro")})
        row.update({m: _mean(fs, lab, m) for m in ("ece_ml", "ece_ml_high", "ece_single", "acc_single", "conf_single")})
        row["labels"] = _mean(fs, lab, "rule", "labels")
        row["macro_ratio"] = row["rule_macro"] / row["lr_macro"]
        row["micro_ratio"] = row["rule_micro"] / row["lr_micro"]
        row["learned_cuts"] = all(r[lab]["learned_cuts"] for r in fs)
        out[lab] = row
    return out


def targets(ml: dict) -> list[tuple[str, bool, str]]:
    """(target, met?, detail) rows of one model."""
    s = summary(ml)
    late = [lab for lab in ml["checkpoints"] if lab == "all" or int(lab) >= RATIO_FROM]
    worst = min(late, key=lambda lab: s[lab]["macro_ratio"])
    ok = s[worst]["macro_ratio"] >= RATIO_TARGET
    rows = [(f"GoEmotions few-shot multi-label macro-F1 >= {RATIO_TARGET} x one-vs-rest LR from {RATIO_FROM} "
             "examples on", ok, ", ".join(f"{lab}: {s[lab]['rule_macro']:.3f} / {s[lab]['lr_macro']:.3f} = "
                                          f"{s[lab]['macro_ratio']:.3f}" for lab in late)
             + ("" if ok else f" (worst {worst}: {s[worst]['macro_ratio'] - RATIO_TARGET:+.3f} below the bar)"))]
    z = ml["zero_shot"]
    d = z["rule"]["micro"] - z["top1"]["micro"]
    rows.append(("GoEmotions zero-shot multi-label micro-F1 above top-1 only", d > 0,
                 f"{z['rule']['micro']:.3f} vs {z['top1']['micro']:.3f} ({d:+.3f}) at threshold {z['threshold']:g}"))
    return rows


def section(models: dict) -> list[str]:
    """The report's multi-label section (markdown lines)."""
    first = next((i["multilabel"] for i in models.values() if "multilabel" in i), None)
    if first is None:
        return []
    sp = first["split"]
    L = ["## Multi-label (GoEmotions)", "",
         f"GoEmotions' dev split (5,426 Reddit comments, 28 emotions, 1-4 labels each), split once with "
         f"`default_rng({sp['split_seed']})`: {sp['test']} comments ({sp['test_fraction']:.0%}) are the test part "
         f"reported here, the other {sp['train']} the training stream (`bench/eval_multilabel.py`). Class limit "
         "raised to 28. **Zero-shot**: each label's score is its calibrated share over the 28 labels; "
         "`predicted_labels` = shares at or above the catalog's `multi_label_threshold`, which was fitted on this "
         "training part (the refit here shows it). **Few-shot**: the served learner fed the training stream "
         "(batches of 8, each comment with all its labels), its per-label cuts learned test-then-train from its own "
         "stream, mean over " f"{len(first['few_shot'])} seeds. **LR bound**: one-vs-rest logistic regression on the "
         "same embeddings and examples, best over C {0.1, 1, 10} x class weight {none, balanced} x one global "
         "threshold 0.05..0.95 *chosen on the test part* (an upper bound, not a fair competitor). Multi-label ECE: "
         "each label's probability vs whether it applies, over all pairs and over the pairs with probability >= 0.1; "
         "single-label ECE: the top score vs whether the top label applies. 10 bins.", ""]
    for model, info in models.items():
        ml = info.get("multilabel")
        if not ml:
            continue
        z = ml["zero_shot"]
        L += [f"### {model}", "",
              f"Zero-shot (score_scale {z['score_scale']:g}, threshold {z['threshold']:g} from the {z['threshold_from']}; "
              f"refitted on the training part: {z['threshold_refit_on_train']:g}):", "",
              "| rule | micro-F1 | macro-F1 | labels per comment | no label |", "|---|---|---|---|---|"]
        for name, key in ((f"share >= {z['threshold']:g}", "rule"), (f"share >= {z['threshold_refit_on_train']:g} "
                                                                      "(refit)", "rule_at_refit"), ("top-1 only", "top1")):
            r = z[key]
            L.append(f"| {name} | {r['micro']:.3f} | {r['macro']:.3f} | {r['labels']:.2f} | {r['empty']:.1%} |")
        L += ["", f"Zero-shot calibration: multi-label ECE {z['ece_ml']:.3f} (pairs with q >= 0.1: "
              f"{z['ece_ml_high']:.3f}); single-label ECE {z['ece_single']:.3f} (top label applies "
              f"{z['acc_single']:.3f}, mean top score {z['conf_single']:.3f}).", ""]
        s = summary(ml)
        labs = ml["checkpoints"]
        L += ["Few-shot (micro / macro F1):", "", "| | " + " | ".join(labs) + " |", "|---|" + "---|" * len(labs)]
        for name, key in (("ours, learned per-label cuts", "rule"), ("top-1 only", "top1"), ("OvR LR (upper bound)", "lr")):
            L.append(f"| {name} | " + " | ".join(f"{s[lab][key + '_micro']:.3f} / {s[lab][key + '_macro']:.3f}"
                                                for lab in labs) + " |")
        rows = (("macro-F1 ratio ours / LR", "macro_ratio", ".3f"), ("micro-F1 ratio ours / LR", "micro_ratio", ".3f"),
                ("labels per comment (ours)", "labels", ".2f"), ("multi-label ECE, all pairs", "ece_ml", ".3f"),
                ("multi-label ECE, pairs with q >= 0.1", "ece_ml_high", ".3f"),
                ("single-label ECE", "ece_single", ".3f"), ("single-label: top label applies", "acc_single", ".3f"),
                ("single-label: mean top score", "conf_single", ".3f"))
        for name, key, fmt in rows:
            L.append(f"| {name} | " + " | ".join(format(s[lab][key], fmt) for lab in labs) + " |")
        L.append("")
    return L
