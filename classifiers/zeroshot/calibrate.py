"""Fit a model's zero-shot calibration from labeled texts.

    python -m classifiers.zeroshot.calibrate --model NAME --csv labeled.csv [--draws 4] [--seed 0]

Zero-shot scores are ``softmax(score_scale * cos(x, label))`` over the request's labels
(:mod:`classifiers.zeroshot.scoring`). They are probabilities a user can put a threshold on only when
``score_scale`` was fitted for the model; an operator's own model (``extra_models:``) has whatever scale the operator
wrote, so its ``score`` is a relative share until this command has fitted one. What it does:

1. Embeds the CSV's texts and label names through the model's own recipe: the registry entry
   (:mod:`classifiers.catalog.registry`, built-ins plus the ``extra_models`` of ``--config``), the engine's encoder
   (``load_encoder``) and the label recipe (``ModelSpec.label_texts`` + ``pool_label_vectors``), exactly as the
   service embeds a request.
2. Scores each single-label text against label subsets: its own label plus others, ``--draws`` subsets per text,
   sizes log-uniform in 2..min(K, 256) (256 is the service's largest flat label list), half drawn at random and half
   among the labels nearest to the true one (related labels: the hard case a real label list often is). One scale
   must serve every label-set size and both kinds of list; fitted on one size only it is mis-calibrated at others.
3. Fits the NLL-optimal ``score_scale`` by Newton's method on the mean negative log-likelihood, which is convex in
   the scale (its second derivative is the variance of the cosine under the scores), so the optimum is unique.
4. With multi-label rows (labels separated by ``|``), also fits ``multi_label_threshold``: the cut on each label's
   calibrated share, over all the CSV's labels at once, that maximises micro-F1 over every (text, label) pair.

It prints the catalog fields as JSON on stdout, to paste into the model's entry (``extra_models:`` in the app
config); a summary of the fit (NLL, 10-bin ECE and micro-F1 at the fitted and the current values) goes to stderr.
Fit on data like the traffic the model will serve and never on data an evaluation reports: a scale is calibrated
for the kind of label set it was fitted on (docs/eval/report.md measures how far CLINC-fitted scales carry).

numpy only, no Ray.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from classifiers.catalog.registry import BUILTIN_MODELS, ModelSpec, build_registry, pool_label_vectors
from classifiers.zeroshot.scoring import softmax

MAX_LABEL_SET = 256  # the largest flat label list the service accepts (Limits.max_labels)
MAX_SCALE = 10_000.0  # beyond this the data are (nearly) separable: no finite optimum worth shipping
THRESHOLD_GRID = np.round(np.arange(0.005, 0.9951, 0.005), 3)  # candidate multi-label cuts on the share


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class LabeledTexts:
    """A labeled CSV: ``labels[i]`` are all the labels of ``texts[i]`` (one for a single-label row)."""

    texts: list[str]
    labels: list[tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        """The label set, sorted (the order of the label vectors)."""
        return sorted({lab for labs in self.labels for lab in labs})

    def label_ids(self) -> list[list[int]]:
        index = {n: j for j, n in enumerate(self.names)}
        return [[index[lab] for lab in labs] for labs in self.labels]


def read_labeled_csv(path: str | Path, *, text_column: str = "text", label_column: str = "label",
                     separator: str = "|", label_words: bool = False) -> LabeledTexts:
    """Rows of a CSV with a header. A row's labels are its label cell split at ``separator``, stripped, blanks
    and repeats dropped; ``label_words`` turns ``snake_case`` names into words (``book_flight`` -> ``book flight``),
    for data sets whose label ids are not what a client would send as labels."""
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {text_column, label_column} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: no column {', '.join(sorted(missing))} (columns: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            labs = [x.strip() for x in (row[label_column] or "").split(separator)]
            labs = list(dict.fromkeys(" ".join(x.replace("_", " ").split()) if label_words else x for x in labs if x))
            if not labs or not (row[text_column] or "").strip():
                raise ValueError(f"{path}:{line}: a row needs a text and at least one label")
            texts.append(row[text_column])
            labels.append(tuple(labs))
    if len({lab for labs in labels for lab in labs}) < 2:
        raise ValueError(f"{path}: at least 2 distinct labels are needed to calibrate")
    return LabeledTexts(texts, labels)


# ------------------------------------------------------------------------------------ label subsets
def subset_sizes(n: int, n_labels: int, rng: np.random.Generator, max_size: int = MAX_LABEL_SET) -> np.ndarray:
    """``n`` label-set sizes, log-uniform in 2..min(n_labels, max_size): as many 2-5-label requests as 50-150-label
    ones, since the size changes how peaked a softmax is and a per-model scale must hold across sizes."""
    hi = min(n_labels, max_size)
    return np.exp(rng.uniform(math.log(2), math.log(hi + 0.999), n)).astype(int).clip(2, hi)


def label_neighbours(L: np.ndarray) -> np.ndarray:
    """(K, K-1) each label's other labels, nearest first by label-vector cosine."""
    sim = L @ L.T
    np.fill_diagonal(sim, np.inf)  # itself first, then dropped
    return np.argsort(-sim, axis=1, kind="stable")[:, 1:]


def draw_label_subsets(cos: np.ndarray, y: np.ndarray, sizes: np.ndarray, rng: np.random.Generator,
                       neighbours: np.ndarray | None = None, related: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged label subsets as padded arrays: (cosines (n, S), mask (n, S), position of the true label (n,)).

    Row i holds ``sizes[i]`` labels in random order: its true label ``y[i]`` and others drawn without replacement
    from all labels, or, where ``related[i]``, from the ``2 * size`` labels nearest to the true one
    (``neighbours``, :func:`label_neighbours`)."""
    n, K = cos.shape
    width = int(sizes.max())
    C = np.zeros((n, width))
    M = np.zeros((n, width), bool)
    pos = np.zeros(n, int)
    others = np.arange(K - 1)
    for i in range(n):
        size = int(sizes[i])
        if related is not None and neighbours is not None and related[i]:
            pool = neighbours[y[i], : min(K - 1, 2 * size)]
        else:
            pool = others + (others >= y[i])  # every label but the true one
        ids = np.concatenate([[y[i]], rng.choice(pool, size - 1, replace=False)])
        rng.shuffle(ids)
        C[i, :size] = cos[i, ids]
        M[i, :size] = True
        pos[i] = int(np.flatnonzero(ids == y[i])[0])
    return C, M, pos


# ---------------------------------------------------------------------------------------- the fits
def scale_nll(scale: float, C: np.ndarray, pos: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[float, float, float]:
    """Mean NLL of ``softmax(scale * C)`` at the true positions and its first and second derivatives in the scale:
    ``E_p[c] - c_true`` and ``Var_p[c]`` (mean over rows). Masked-out entries are not labels of the row."""
    z = scale * C
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    m = z.max(1, keepdims=True)
    e = np.exp(z - m)
    tot = e.sum(1)
    p = e / tot[:, None]
    Cm = C if mask is None else np.where(mask, C, 0.0)
    ec = (p * Cm).sum(1)
    var = np.maximum((p * Cm * Cm).sum(1) - ec * ec, 0.0)
    rows = np.arange(len(pos))
    nll = np.log(tot) + m[:, 0] - z[rows, pos]
    return float(nll.mean()), float((ec - Cm[rows, pos]).mean()), float(var.mean())


def fit_score_scale(C: np.ndarray, pos: np.ndarray, mask: np.ndarray | None = None, *, start: float = 10.0,
                    tol: float = 1e-9, max_iter: int = 200) -> float:
    """The ``score_scale`` minimising :func:`scale_nll`: Newton steps on the convex NLL, kept inside a bracket
    [lo, hi] where the derivative changes sign (a step that leaves it is replaced by bisection, or by doubling while
    no upper end is known), so it converges from any start.

    Raises ValueError when no positive finite optimum exists: the true labels are no closer than the others on
    average (the optimum is 0: this model cannot do zero-shot on these labels), or they are (nearly) separable."""
    if scale_nll(0.0, C, pos, mask)[1] >= 0:
        raise ValueError("the true labels are not closer than the others on average: no positive scale fits")
    lo, hi, s = 0.0, math.inf, float(start)
    for _ in range(max_iter):
        _, g, h = scale_nll(s, C, pos, mask)
        if g < 0 or h <= 0:  # h == 0: every row's softmax has collapsed on one label, the NLL is flat but not risen
            lo = s
        else:
            hi = s
        step = -g / h if h > 0 else math.inf
        new = s + step
        if not (lo < new < hi):
            new = 2.0 * s if math.isinf(hi) else 0.5 * (lo + hi)
        if new > MAX_SCALE:
            raise ValueError(f"the NLL still falls at scale {MAX_SCALE:g}: the labels are (nearly) separable")
        if abs(new - s) <= tol * max(s, 1.0):
            return new
        s = new
    return s


def threshold_f1(probs: np.ndarray, truth: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Micro-F1 of ``probs >= t`` against the bool ``truth`` (same shape) at every t of ``grid``, all pairs pooled;
    one sort, so a grid of any size costs the same."""
    q = np.asarray(probs, np.float64).ravel()
    y = np.asarray(truth, bool).ravel()
    order = np.argsort(q, kind="stable")
    qs, ys = q[order], y[order]
    tp_from = np.concatenate([np.cumsum(ys[::-1])[::-1], [0]])  # positives among ranks >= i
    first = np.searchsorted(qs, grid, side="left")  # rank of the first score >= t
    predicted = len(q) - first
    den = y.sum() + predicted
    return np.divide(2.0 * tp_from[first], den, out=np.zeros(len(grid)), where=den > 0)


def fit_multi_label_threshold(probs: np.ndarray, truth: np.ndarray, grid: np.ndarray = THRESHOLD_GRID
                              ) -> tuple[float, float]:
    """(threshold, micro-F1): the grid cut on each label's probability that maximises micro-F1 (the smallest such
    cut on ties). Micro-F1 weighs every (text, label) pair alike, so frequent labels set the default cut; a user who
    cares about rare labels passes their own threshold."""
    f1 = threshold_f1(probs, truth, grid)
    j = int(np.argmax(f1))
    return float(grid[j]), float(f1[j])


def ece10(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: equal-width bins over [0, 1], |mean outcome - mean confidence| weighted by the
    bin's share of the predictions."""
    conf = np.asarray(conf, np.float64).ravel()
    hit = np.asarray(correct, np.float64).ravel()
    if conf.size == 0:
        return float("nan")
    b = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    return float(np.abs(np.bincount(b, weights=hit - conf, minlength=bins)).sum() / conf.size)


# ------------------------------------------------------------------------------ from vectors to fields
@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fitted, and how well: the catalog fields and a summary for the operator."""

    score_scale: float
    multi_label_threshold: float | None
    summary: dict

    def catalog_fields(self) -> dict:
        """The fields to paste into the model's catalog entry."""
        out: dict = {"score_scale": round(self.score_scale, 2)}
        if self.multi_label_threshold is not None:
            out["multi_label_threshold"] = self.multi_label_threshold
        return out


def calibrate(X: np.ndarray, L: np.ndarray, label_ids: Sequence[Sequence[int]], *, draws: int = 4, seed: int = 0,
              current_scale: float | None = None) -> Calibration:
    """Fit the catalog fields from unit input vectors ``X`` (n, D), unit label vectors ``L`` (K, D) and each input's
    label ids. The scale is fitted on the single-label rows (a row with several labels has no single right answer
    in a softmax); the multi-label threshold, if any row has several labels, on every row against all K labels, at
    the fitted scale. ``seed`` fixes the subsets, so the same data and seed give the same fit on any machine."""
    cos = np.asarray(X, np.float64) @ np.asarray(L, np.float64).T
    K = cos.shape[1]
    single = np.array([len(ids) == 1 for ids in label_ids])
    if single.sum() < 2:
        raise ValueError("the scale is fitted on single-label rows: the CSV has fewer than 2")
    y = np.array([ids[0] for ids in label_ids])[single]
    rng = np.random.default_rng(seed)
    cc, yy = np.tile(cos[single], (draws, 1)), np.tile(y, draws)
    sizes = subset_sizes(len(yy), K, rng)
    related = rng.random(len(yy)) < 0.5
    C, M, pos = draw_label_subsets(cc, yy, sizes, rng, label_neighbours(np.asarray(L, np.float64)), related)
    scale = fit_score_scale(C, pos, M)
    summary: dict = {"texts": len(label_ids), "single_label_texts": int(single.sum()), "labels": K,
                     "draws": draws, "seed": seed, "subsets": len(yy), "median_subset_size": float(np.median(sizes))}
    for name, s in (("fitted", scale), ("current", current_scale)):
        if s is not None:
            P = softmax(np.where(M, s * C, -np.inf))
            summary[f"{name}_scale"] = {"scale": round(float(s), 3), "nll": round(scale_nll(s, C, pos, M)[0], 4),
                                        "ece": round(ece10(P.max(1), P.argmax(1) == pos), 4)}
    threshold = None
    if not single.all():
        truth = np.zeros(cos.shape, bool)
        for i, ids in enumerate(label_ids):
            truth[i, list(ids)] = True
        probs = softmax(scale * cos)
        threshold, f1 = fit_multi_label_threshold(probs, truth)
        top1 = np.zeros_like(truth)
        top1[np.arange(len(cos)), probs.argmax(1)] = True
        top1_f1 = float(threshold_f1(top1.astype(float), truth, np.array([0.5]))[0])
        summary["multi_label"] = {"rows_with_several_labels": int((~single).sum()), "threshold": threshold,
                                  "micro_f1": round(f1, 4), "top1_only_micro_f1": round(top1_f1, 4)}
    return Calibration(scale, threshold, summary)


# ---------------------------------------------------------------------------------------- embedding
def resolve_spec(model: str, config: str | Path | None = None) -> ModelSpec:
    """The model's registry entry: a built-in, or an ``extra_models`` entry of the app config ``config`` (YAML),
    which replaces a built-in of the same name as it does in the service; aliases resolve as in the service."""
    extra: list[ModelSpec] = []
    aliases: dict[str, str] = {}
    if config is not None:
        import yaml

        with open(config, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        extra = [ModelSpec(**entry) for entry in doc.get("extra_models") or []]
        aliases = dict(doc.get("aliases") or {})
    names = sorted({s.name for s in extra} | {s.name for s in BUILTIN_MODELS})
    return build_registry(names, extra, aliases).get(model)


def embed(encoder, texts: list[str], role: str, batch: int = 256) -> np.ndarray:
    """(n, D) float64 unit vectors through ``encoder.encode`` in batches (the encoder adds the role's prefix)."""
    parts = [encoder.encode(texts[i : i + batch], role) for i in range(0, len(texts), batch)]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, encoder.dim))


def label_vectors(spec: ModelSpec, encoder, names: list[str]) -> np.ndarray:
    """(K, D) label vectors by the model's recipe: each name in every template of ``spec.label_texts``, embedded
    with role ``label`` and pooled by ``pool_label_vectors`` (what a zero-shot request gets)."""
    texts = [spec.label_texts(n) for n in names]
    T = len(texts[0])
    flat = embed(encoder, [t for ts in texts for t in ts], "label").reshape(len(names), T, -1)
    return np.stack([pool_label_vectors(v) for v in flat]).astype(np.float64)


# ---------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m classifiers.zeroshot.calibrate",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--model", required=True, help="API model name (a built-in, or an extra_models entry of --config)")
    ap.add_argument("--csv", required=True, help="labeled texts: a header with text and label columns")
    ap.add_argument("--draws", type=int, default=4, help="label subsets per single-label text (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the label subsets (default 0)")
    ap.add_argument("--config", help="app config YAML whose extra_models / aliases define --model")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--separator", default="|", help="between the labels of a multi-label row (default |)")
    ap.add_argument("--label-words", action="store_true",
                    help="send snake_case label ids as words (book_flight -> book flight), as the eval does for CLINC")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the encoder")
    return ap


def main(argv: list[str] | None = None, *, encoder=None) -> int:
    """The command. ``encoder`` (tests): an already loaded encoder of the model, instead of loading it."""
    args = _parser().parse_args(argv)
    if args.draws < 1:
        raise SystemExit("--draws must be at least 1")
    spec = resolve_spec(args.model, args.config)
    data = read_labeled_csv(args.csv, text_column=args.text_column, label_column=args.label_column,
                            separator=args.separator, label_words=args.label_words)
    if encoder is None:
        from classifiers.embedding.engines import load_encoder

        encoder = load_encoder(spec, num_threads=args.threads)
    X = embed(encoder, data.texts, "input")
    L = label_vectors(spec, encoder, data.names)
    try:
        fit = calibrate(X, L, data.label_ids(), draws=args.draws, seed=args.seed, current_scale=spec.score_scale)
    except ValueError as err:
        print(f"cannot calibrate {spec.name!r} on {args.csv}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"model": spec.name, "csv": str(args.csv), **fit.summary}, indent=1), file=sys.stderr)
    print(json.dumps(fit.catalog_fields()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
