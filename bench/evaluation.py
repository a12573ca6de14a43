"""Building blocks of the few-shot quality evaluation (bench/eval_fewshot.py).

* data: CSVs with ``text,label`` columns, CLINC150 label domains;
* embeddings through the real code path (``classifiers.embedding.engines.load_encoder(spec).encode``), cached as .npy
  under ``.cache/eval/`` keyed by model, role, prefix and a hash of the texts;
* baselines on the same embeddings: zero-shot, nearest class mean, full-batch multinomial logistic
  regression (tuned C), online passive-aggressive (PA-I, ``num_iters`` passes per batch, as Jina's
  few-shot service);
* metrics: accuracy and macro-F1 from scikit-learn; NLL and expected calibration error (15 equal-width bins, which
  scikit-learn has no equivalent of) written out here.

Nothing here imports Ray.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from classifiers.zeroshot.scoring import score, softmax

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "eval"


# --------------------------------------------------------------------------------------------- data
@dataclass
class Split:
    texts: list[str]
    labels: list[str]


def read_csv(path: str | os.PathLike) -> Split:
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(row["label"])
    return Split(texts, labels)


def split_csv(data: Split, test_fraction: float = 0.3, seed: int = 0) -> tuple[Split, Split]:
    """Stratified split of one CSV into train/test (for --csv without --test)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(data.labels):
        by_label.setdefault(lab, []).append(i)
    tr, te = [], []
    for idx in by_label.values():
        idx = list(rng.permutation(idx))
        k = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        te += idx[:k]
        tr += idx[k:]
    tr.sort(), te.sort()
    pick = lambda ids: Split([data.texts[i] for i in ids], [data.labels[i] for i in ids])  # noqa: E731
    return pick(tr), pick(te)


def load_domains(path: str | os.PathLike) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["domains"]


def label_words(label: str) -> str:
    """`book_flight` -> `book flight` (label names as words for zero-shot and the label prior)."""
    return label.replace("_", " ").strip()


# ---------------------------------------------------------------------------------------- embeddings
_ENCODERS: dict[tuple, object] = {}


def get_spec(model: str, **overrides):
    from classifiers.catalog.registry import BUILTIN_MODELS

    spec = next(s for s in BUILTIN_MODELS if s.name == model)
    return spec.model_copy(update=overrides) if overrides else spec


def _encoder(spec):
    from classifiers.embedding.engines import load_encoder

    key = (spec.name, spec.input_prefix, spec.label_prefix)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(spec, num_threads=2)
    return _ENCODERS[key]


def embed(model: str, texts: list[str], role: str, *, label_prefix: str | None = None,
          cache_dir: Path = CACHE_DIR, batch: int = 256, progress: bool = True) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings through ``load_encoder(spec).encode(texts, role)``, cached.

    ``label_prefix`` overrides the registry's label prefix (role "label" only), to compare prompts.
    """
    spec = get_spec(model) if label_prefix is None else get_spec(model, label_prefix=label_prefix)
    prefix = spec.input_prefix if role == "input" else spec.label_prefix
    h = hashlib.sha1("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]
    safe_pfx = prefix.strip().rstrip(":") or "none"
    path = Path(cache_dir) / f"{model}__{role}__{safe_pfx}__{len(texts)}__{h}.npy"
    if path.exists():
        return np.load(path)
    enc = _encoder(spec)
    out = []
    it = range(0, len(texts), batch)
    if progress and len(texts) > batch:
        from tqdm import tqdm

        it = tqdm(it, desc=f"embed {model} {role}", unit="batch", leave=False)
    for s in it:
        out.append(enc.encode(texts[s : s + batch], role))
    arr = np.concatenate(out).astype(np.float32) if out else np.zeros((0, enc.dim), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return arr


# ------------------------------------------------------------------------------------------ metrics
def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes present in y_true (a class never predicted counts F1 = 0)."""
    return f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)


def nll(probs: np.ndarray, y_true: np.ndarray) -> float:
    p = probs[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def ece(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 score (equal-width bins)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def fit_scale(cos: np.ndarray, y: np.ndarray, lo: float = 1.0, hi: float = 300.0) -> float:
    """Inverse temperature minimising NLL of softmax(s * cos) (golden-section on log s; NLL is convex in s)."""
    f = lambda ls: nll(softmax(np.exp(ls) * cos), y)  # noqa: E731
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2))


# ---------------------------------------------------------------------------------------- baselines
def zero_shot_probs(X: np.ndarray, L: np.ndarray, scale: float) -> np.ndarray:
    """The service's own zero-shot scoring (classifiers.zeroshot.scoring.score)."""
    return score(X, L, scale)


def ncm_predict(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, K: int) -> np.ndarray:
    """Nearest class mean (cosine to the normalised class means); classes never seen get -inf."""
    means = np.zeros((K, Xtr.shape[1]))
    np.add.at(means, ytr, Xtr)
    seen = np.bincount(ytr, minlength=K) > 0
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    s = Xte @ means.T
    s[:, ~seen] = -np.inf
    return s.argmax(1)


def logreg_fit_predict(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, C: float) -> np.ndarray:
    """Full-batch multinomial logistic regression on all seen examples; predicts class indices."""
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(ytr)
    if len(classes) == 1:
        return np.full(len(Xte), classes[0])
    clf = LogisticRegression(C=C, max_iter=2000)
    c = Xtr.mean(0)  # centring changes only the (unpenalised) intercept, and speeds lbfgs up a lot
    clf.fit(Xtr - c, ytr)
    return clf.predict(Xte - c)


def tune_logreg_C(X: np.ndarray, y: np.ndarray, grid=(10, 30, 100, 300), folds: int = 5, seed: int = 0) -> float:
    """C by stratified k-fold cross-validation on the training split only (warm-started along the C grid)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    grid = sorted(grid)
    scores = np.zeros(len(grid))
    for tr, te in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, y):
        clf = LogisticRegression(max_iter=2000, warm_start=True)
        c = X[tr].mean(0)  # centred as in logreg_fit_predict
        for j, C in enumerate(grid):
            clf.set_params(C=C).fit(X[tr] - c, y[tr])
            scores[j] += clf.score(X[te] - c, y[te])  # accuracy
    return float(grid[int(np.argmax(scores))])


class OnlinePA:
    """Multiclass passive-aggressive (PA-I, Crammer et al. 2006), the learner of sklearn's
    PassiveAggressiveClassifier as used by Jina's few-shot classifier: fed batches, ``num_iters`` passes over
    each batch, examples in batch order (shuffled per pass with a fixed seed), one weight row per class
    (one-vs-rest hinge, as sklearn), classes added when first seen. Weights are zero-initialised."""

    def __init__(self, dim: int, C: float = 1.0, seed: int = 0):
        self.W = np.zeros((0, dim))
        self.b = np.zeros(0)
        self.C = C
        self.classes: dict[int, int] = {}
        self.rng = np.random.default_rng(seed)

    def partial_fit(self, X: np.ndarray, y: np.ndarray, num_iters: int = 10) -> None:
        for c in y:
            if int(c) not in self.classes:
                self.classes[int(c)] = len(self.classes)
                self.W = np.vstack([self.W, np.zeros((1, self.W.shape[1]))])
                self.b = np.append(self.b, 0.0)
        K = len(self.classes)
        if K < 2:
            return
        yi = np.array([self.classes[int(c)] for c in y])
        for _ in range(num_iters):
            for i in self.rng.permutation(len(yi)):
                x = X[i]
                t = -np.ones(K)
                t[yi[i]] = 1.0
                loss = np.maximum(0.0, 1.0 - t * (self.W @ x + self.b))
                tau = np.minimum(self.C, loss / (x @ x + 1.0))  # the intercept is a feature too
                if tau.any():
                    self.W += np.outer(tau * t, x)
                    self.b += tau * t

    def predict(self, X: np.ndarray) -> np.ndarray:
        inv = np.array(sorted(self.classes, key=self.classes.get))
        if len(inv) == 0:
            return np.zeros(len(X), int)
        if len(inv) == 1:
            return np.full(len(X), inv[0])
        return inv[np.argmax(X @ self.W.T + self.b, axis=1)]


# ------------------------------------------------------------------------------------ stream protocol
@dataclass
class Task:
    """One classification task on cached embeddings: class indices into ``names`` (local order)."""

    name: str
    names: list[str]  # class names (local index -> name)
    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray
    L: np.ndarray  # (K, D) label vectors of the names turned into words, registry prompt
    L_opaque: np.ndarray  # (K, D) label vectors of opaque ids (c00, c01, ...), registry prompt
    C: float = 1.0  # logistic regression C for this task (tuned by cross-validation on the full training split)


METHODS = ("zero-shot", "ours", "ours, no prior", "ours, opaque ids", "ours, diagonal cov", "logreg", "NCM", "PA")
PROB_METHODS = ("zero-shot", "ours", "ours, no prior", "ours, opaque ids")


def accuracy_only(config=None):
    """The learner config for runs that measure accuracy only: without the prequential out-of-scope record,
    whose extra fit per batch does not change any prediction (tests/classifiers/fewshot/test_declared_oos.py) and
    would only slow the evaluation down. Runs that score out-of-scope inputs keep the served default."""
    from classifiers.fewshot.learner_config import LearnerConfig

    return (config or LearnerConfig()).model_copy(update={"oos_record": False})


def stream_batches(perm: np.ndarray, checkpoints: list[int], batch_size: int):
    """Walk a stream to each checkpoint: yields (checkpoint index, k, the batches fed since the last one)."""
    pos = 0
    for ci, k in enumerate(checkpoints):
        k = min(k, len(perm))
        batches = []
        while pos < k:
            batches.append(perm[pos : min(pos + batch_size, k)])
            pos += len(batches[-1])
        yield ci, k, batches


def _new_classes(y: np.ndarray, seen: set[int]) -> set[int]:
    """The classes in ``y`` not in ``seen``, which is updated with them."""
    new = {int(j) for j in y} - seen
    seen |= new
    return new


def _predict(lrn, task: Task, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A learner's predicted class ids (indices into ``task.names``) and its probabilities, columns reordered to
    ascending class ids."""
    ids = np.array([task.names.index(n) for n in lrn.labels])  # learner columns -> class ids
    probs = lrn.predict_proba(X)
    return ids[probs.argmax(1)], probs[:, np.argsort(ids)]


def _stream_learners(task: Task, score_scale: float, learner_config) -> dict:
    """The few-shot variants of :func:`run_stream`: {method: (learner, label vectors it gets for new labels)}."""
    from classifiers.fewshot.learner import FewShotLearner

    config = accuracy_only(learner_config)
    diagonal = config.model_copy(update={"covariance": "diagonal"})
    dim = task.Xtr.shape[1]
    return {
        "ours": (FewShotLearner(dim, score_scale=score_scale, config=config), task.L),
        "ours, no prior": (FewShotLearner(dim, score_scale=score_scale, config=config), None),
        "ours, opaque ids": (FewShotLearner(dim, score_scale=score_scale, config=config), task.L_opaque),
        # the fallback for large dims (state budget): the same learner with only the diagonal of the scatter
        "ours, diagonal cov": (FewShotLearner(dim, score_scale=score_scale, config=diagonal), task.L),
    }


def run_stream(task: Task, perm: np.ndarray, checkpoints: list[int], *, score_scale: float,
               batch_size: int = 8, num_iters: int = 10, learner_config=None, pa_seed: int = 0) -> dict:
    """Feed the task's training examples in ``perm`` order, in batches, to every online method; at each
    checkpoint k evaluate all methods on the test examples of the classes seen so far (the label set the
    few-shot classifier knows), with the same label set for zero-shot and the batch baselines.

    Returns {metric: {method: array over checkpoints}} for metrics acc, f1, nll, ece, plus ``classes`` and
    ``coverage`` (fraction of the task's test examples whose class is known at k).
    """
    learners = _stream_learners(task, score_scale, learner_config)
    pa = OnlinePA(task.Xtr.shape[1], seed=pa_seed)
    out = {m: {k: np.full(len(checkpoints), np.nan) for k in METHODS} for m in ("acc", "f1", "nll", "ece")}
    out["classes"], out["coverage"] = np.zeros(len(checkpoints)), np.zeros(len(checkpoints))
    seen_in_learner: set[int] = set()
    for ci, k, batches in stream_batches(perm, checkpoints, batch_size):
        for sel in batches:
            names = [task.names[j] for j in task.ytr[sel]]
            new = _new_classes(task.ytr[sel], seen_in_learner)
            for lrn, Lv in learners.values():
                lv = None if Lv is None else {task.names[j]: Lv[j] for j in new}
                lrn.update(task.Xtr[sel], names, weight=num_iters / 10.0, label_vectors=lv)
            pa.partial_fit(task.Xtr[sel], task.ytr[sel], num_iters=num_iters)
        known = np.unique(task.ytr[perm[:k]])
        mask = np.isin(task.yte, known)
        Xt, yt = task.Xte[mask], task.yte[mask]
        yl = np.searchsorted(known, yt)  # test labels as positions in `known`
        out["classes"][ci], out["coverage"][ci] = len(known), mask.mean()

        def record(method, pred, probs_known=None, *, ci=ci, yt=yt, yl=yl):
            out["acc"][method][ci] = accuracy_score(yt, pred)
            out["f1"][method][ci] = macro_f1(yt, pred)
            if probs_known is not None:
                out["nll"][method][ci] = nll(probs_known, yl)
                out["ece"][method][ci] = ece(probs_known, yl)

        P = zero_shot_probs(Xt, task.L[known], score_scale)
        record("zero-shot", known[P.argmax(1)], P)
        for method, (lrn, _) in learners.items():
            record(method, *_predict(lrn, task, Xt))
        Xs, ys = task.Xtr[perm[:k]], task.ytr[perm[:k]]
        record("logreg", logreg_fit_predict(Xs, ys, Xt, task.C))
        record("NCM", ncm_predict(Xs, ys, Xt, len(task.names)))
        record("PA", pa.predict(Xt))
    return out


def run_learner_only(task: Task, perm: np.ndarray, checkpoints: list[int], *, weight: float, batch_size: int = 8,
                     learner_config=None, prior: bool = True) -> np.ndarray:
    """Accuracy of the few-shot learner alone at each checkpoint (same protocol as :func:`run_stream`)."""
    from classifiers.fewshot.learner import FewShotLearner

    lrn = FewShotLearner(task.Xtr.shape[1], score_scale=1.0, config=accuracy_only(learner_config))
    acc = np.zeros(len(checkpoints))
    seen: set[int] = set()
    for ci, k, batches in stream_batches(perm, checkpoints, batch_size):
        for sel in batches:
            new = _new_classes(task.ytr[sel], seen)
            lrn.update(task.Xtr[sel], [task.names[j] for j in task.ytr[sel]], weight=weight,
                       label_vectors={task.names[j]: task.L[j] for j in new} if prior else None)
        mask = np.isin(task.yte, task.ytr[perm[:k]])
        acc[ci] = accuracy_score(task.yte[mask], _predict(lrn, task, task.Xte[mask])[0])
    return acc


# ------------------------------------------------------------------------ label recipe (registry)
def embed_labels(model: str, names: list[str], templates: tuple[str, ...] | None = None) -> np.ndarray:
    """(K, D) label vectors through the registry's zero-shot recipe: each label name (as words) in every
    template of ``spec.label_texts`` (or ``templates``), embedded with role "label" and pooled by
    ``classifiers.catalog.registry.pool_label_vectors`` — what the service computes for zero-shot and the label prior."""
    from classifiers.catalog.registry import pool_label_vectors

    spec = get_spec(model) if templates is None else get_spec(model, label_templates=tuple(templates))
    texts = [spec.label_texts(label_words(n)) for n in names]
    T = len(texts[0])
    flat = embed(model, [t for ts in texts for t in ts], "label", progress=False).reshape(len(names), T, -1)
    return np.stack([pool_label_vectors(v) for v in flat]).astype(np.float64)


# --------------------------------------------------------------------- all-classes protocol and OOS
ALL_METHODS = ("zero-shot", "ours, declared labels", "ours", "logreg", "NCM", "PA")
OOS_SCORES_ZS = ("max softmax", "max cosine (ours, zero-shot)", "energy")
OOS_SCORES_FS = ("max softmax", "ours (calibrated max logit)", "Mahalanobis (full)", "max cosine to class means",
                 "energy")


def _energy(z: np.ndarray) -> np.ndarray:
    """-logsumexp of the logits (row-wise), the energy OOS score."""
    m = z.max(1)
    return -(m + np.log(np.exp(z - m[:, None]).sum(1)))


def _min_mahalanobis(X: np.ndarray, Sigma: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of X to the nearest class mean; ``Sigma`` full or its diagonal."""
    if Sigma.ndim == 2:
        Si = np.linalg.inv(Sigma)
        q = np.einsum("nd,de,ne->n", X, Si, X)
        cross = X @ Si @ mu.T
        mq = np.einsum("kd,de,ke->k", mu, Si, mu)
    else:
        q = (X * X / Sigma).sum(1)
        cross = (X / Sigma) @ mu.T
        mq = (mu * mu / Sigma).sum(1)
    return (q[:, None] - 2 * cross + mq[None]).min(1)


def _oos_scores_fewshot(lrn, X: np.ndarray, spec) -> dict[str, np.ndarray]:
    """Out-of-scope scores (larger = more out of scope) of a learner with examples: the baselines (max softmax,
    full Mahalanobis distance with the learner's own covariance and class means, cosine to class means,
    energy = -logsumexp of the logits) and the served score (classifiers.zeroshot.oos.fewshot_oos_score, which the
    service calls: LinearPredictor.oos_score, with the zero-shot rule for a winning class without examples)."""
    from classifiers.zeroshot.oos import fewshot_oos_score

    pred = lrn.compile()
    z = pred.decision_function(X)
    mu = lrn._stats["mu"]
    mun = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    return {"max softmax": -pred.predict_proba(X).max(1),
            "ours (calibrated max logit)": fewshot_oos_score(pred, X, spec, logits=z),
            "Mahalanobis (full)": _min_mahalanobis(X, lrn._stats["Sigma"], mu),
            "max cosine to class means": -(X @ mun.T).max(1), "energy": _energy(z)}


def _oos_scores_zero_shot(X: np.ndarray, L: np.ndarray, spec) -> dict[str, np.ndarray]:
    from classifiers.zeroshot.oos import zero_shot_oos_score

    cos = X @ L.T
    z = spec.score_scale * cos
    return {"max softmax": -softmax(z).max(1), "max cosine (ours, zero-shot)": zero_shot_oos_score(cos, spec),
            "energy": _energy(z)}


def _oos_split(lrn, task: Task, Xoos: np.ndarray, spec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{score: (scores of the task's in-scope test set, scores of ``Xoos``)}: zero-shot on the task's label vectors
    when ``lrn`` is None, else the learner's."""
    def scores(X):
        return _oos_scores_zero_shot(X, task.L, spec) if lrn is None else _oos_scores_fewshot(lrn, X, spec)

    zi, zo = scores(task.Xte), scores(Xoos)
    return {name: (zi[name], zo[name]) for name in zi}


def run_stream_all_classes(task: Task, perm: np.ndarray, checkpoints: list[int], *, spec, Xoos: np.ndarray | None,
                           oos_at: tuple[int, ...] = (), batch_size: int = 8, num_iters: int = 10,
                           learner_config=None, pa_seed: int = 0, declare_config=None) -> dict:
    """The all-classes protocol: at every checkpoint (0 included) every method is scored on ALL test examples
    of the task and chooses among all its labels it can: zero-shot and the learner with every label declared at
    create know all classes from the start; the plain learner, logreg, NCM and PA know only the classes seen so
    far (a test example of an unseen class is an error for them).

    With ``Xoos`` (out-of-scope inputs), at the checkpoints in ``oos_at`` the OOS scores of zero-shot (at 0) and
    of the declared-labels learner (later) are computed on the task's in-scope test set and on ``Xoos``.

    Returns {"acc": {method: array over checkpoints}, "oos": {k: {score: (in_scores, out_scores)}}}.
    """
    from classifiers.fewshot.learner import FewShotLearner

    dim, weight = task.Xtr.shape[1], num_iters / 10.0
    decl = FewShotLearner(dim, score_scale=spec.score_scale, config=declare_config or learner_config)
    decl.declare({n: task.L[j] for j, n in enumerate(task.names)})
    plain = FewShotLearner(dim, score_scale=spec.score_scale, config=accuracy_only(learner_config))
    pa = OnlinePA(dim, seed=pa_seed)
    acc = {m: np.full(len(checkpoints), np.nan) for m in ALL_METHODS}
    oos: dict[int, dict] = {}
    zs_pred = zero_shot_probs(task.Xte, task.L, spec.score_scale).argmax(1)
    seen: set[int] = set()
    for ci, k, batches in stream_batches(perm, checkpoints, batch_size):
        for sel in batches:
            names = [task.names[j] for j in task.ytr[sel]]
            new = _new_classes(task.ytr[sel], seen)
            decl.update(task.Xtr[sel], names, weight=weight)
            plain.update(task.Xtr[sel], names, weight=weight, label_vectors={task.names[j]: task.L[j] for j in new})
            pa.partial_fit(task.Xtr[sel], task.ytr[sel], num_iters=num_iters)
        acc["zero-shot"][ci] = accuracy_score(task.yte, zs_pred)
        acc["ours, declared labels"][ci] = accuracy_score(task.yte, _predict(decl, task, task.Xte)[0])
        if k > 0:
            Xs, ys = task.Xtr[perm[:k]], task.ytr[perm[:k]]
            acc["ours"][ci] = accuracy_score(task.yte, _predict(plain, task, task.Xte)[0])
            acc["logreg"][ci] = accuracy_score(task.yte, logreg_fit_predict(Xs, ys, task.Xte, task.C))
            acc["NCM"][ci] = accuracy_score(task.yte, ncm_predict(Xs, ys, task.Xte, len(task.names)))
            acc["PA"][ci] = accuracy_score(task.yte, pa.predict(task.Xte))
        if Xoos is not None and k in oos_at:
            oos[k] = _oos_split(None if k == 0 else decl, task, Xoos, spec)
    return {"acc": acc, "oos": oos}


def run_stream_oos(task: Task, perm: np.ndarray, oos_at: tuple[int, ...], *, spec, Xoos: np.ndarray,
                   batch_size: int = 8, num_iters: int = 10, learner_config=None) -> dict:
    """Out-of-scope detection of ONE classifier with every label of ``task`` declared (e.g. all 150 CLINC
    intents), fed the stream ``perm`` in batches: at each k in ``oos_at`` (0 = zero-shot on all labels) the
    OOS scores of the task's in-scope test set and of ``Xoos``. Only the declared-labels learner runs (no
    baselines to refit), so the 150-way task stays cheap. Returns {k: {score: (in_scores, out_scores)}}."""
    from classifiers.fewshot.learner import FewShotLearner

    lrn = FewShotLearner(task.Xtr.shape[1], score_scale=spec.score_scale, config=learner_config)
    lrn.declare({n: task.L[j] for j, n in enumerate(task.names)})
    out: dict[int, dict] = {}
    for _ci, k, batches in stream_batches(perm, sorted(oos_at), batch_size):
        for sel in batches:
            lrn.update(task.Xtr[sel], [task.names[j] for j in task.ytr[sel]], weight=num_iters / 10.0)
        out[k] = _oos_split(None if k == 0 else lrn, task, Xoos, spec)
    return out


def generic_corpus(limit: int = 800) -> list[str]:
    """A fixed, label-free reference corpus that ships with every Python: the first sentence of the standard
    library's public docstrings (5-25 plain words), sorted and thinned to ``limit``. Generic text, deliberately
    not CLINC's (a zero-shot request has no in-domain inputs to calibrate on); deterministic for one Python
    version, so its embeddings are cached like the rest."""
    import importlib
    import inspect
    import re
    import warnings

    sents: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in sorted(x for x in sys.stdlib_module_names if not x.startswith("_") and x not in ("antigravity", "this")):
            try:
                mod = importlib.import_module(m)
            except Exception:  # noqa: BLE001 - platform-specific modules
                continue
            for o in [mod] + [getattr(mod, n, None) for n in dir(mod) if not n.startswith("_")]:
                d = inspect.getdoc(o) if o is not None else None
                if not d:
                    continue
                first = re.split(r"(?<=[.!?])\s", " ".join(d.split("\n\n")[0].split()))[0]
                if 5 <= len(first.split()) <= 25 and re.fullmatch(r"[A-Za-z ,.'()-]+", first) and not re.search(r"\(\)|_", first):
                    sents.add(first)
    out = sorted(sents)
    return out[:: max(1, len(out) // limit)][:limit]
