"""The few-shot learner: a streaming, shrunk shared-covariance Gaussian class model (regularised LDA)
with a label-name prior that switches itself off when the label names carry no information.

Everything the learner knows is a handful of *sufficient statistics*, accumulated in float64:

* ``n[k]``  weighted example count of class k,
* ``s[k]``  weighted sum of the class's input embeddings,
* ``S``     one shared weighted scatter  sum_i w_i x_i x_i^T  (D x D, symmetric; or its diagonal),
* ``L[k]``  the embedding of the class's label name (role "label"), if the caller gave one.

An example may carry several labels: each (input, label) pair is one example of its class. Bounded prequential
records of the model's out-of-sample scores (``classifiers/fewshot/calibration.py``) calibrate the compiled scores.

``update`` adds a batch to these sums and drops it: no example (text or embedding) is stored, the result does
not depend on the order of examples or how they are split into calls (sums commute), ``weight`` scales a
batch's contribution at no extra cost, and new classes may appear in any call. Prediction derives class means,
the within-class covariance, its shrinkage and the label prior from the sums alone (see docs/fewshot.md).

No Ray, no torch: numpy only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from classifiers.fewshot import calibration as cal
from classifiers.fewshot import state as fewshot_state
from classifiers.fewshot.calibration import LabelRecord, TemperatureRecord
from classifiers.fewshot.learner_config import LearnerConfig
from classifiers.fewshot.predictor import LinearPredictor
from classifiers.fewshot.state import READABLE_VERSIONS, STATE_VERSION
from classifiers.fewshot.state import scatter_bytes as _scatter_bytes
from classifiers.fewshot.state import state_bytes as _state_bytes
from classifiers.fewshot.unlabeled import UnlabeledRecord, anchored

__all__ = ["FewShotLearner", "LearnerConfig", "LinearPredictor", "READABLE_VERSIONS", "STATE_VERSION", "_state_bytes"]

PREQUENTIAL_MIN_CHUNK = 8  # smallest chunk an update is scored in before it is learned (see FewShotLearner.update)


@dataclass(frozen=True)
class _Covariance:
    """The shared covariance of one fit (FewShotLearner._shrunk_covariance)."""

    W: np.ndarray  # within-class scatter (D x D, or its diagonal)
    Sigma: np.ndarray  # shrunk covariance (D x D, or its diagonal)
    nu: float  # average per-dimension total variance: the shrinkage target is nu * I
    sigma2: float  # average per-dimension variance of Sigma
    dof: float  # degrees of freedom of the data, N - K_seen
    dof0: float  # pseudo degrees of freedom of the prior
    full: bool

    def within(self) -> np.ndarray | None:
        """The unshrunk within-class covariance, None without a degree of freedom."""
        if self.dof > 1e-9:
            # Weighted counts (num_iters / 10 per example) make N - K fractional, and rounding can leave it at 1e-16
            # where it should be 0: never divide by less than one degree of freedom.
            return (self.W if self.full else np.maximum(self.W, 0.0)) / max(self.dof, 1.0)
        return None


class FewShotLearner:
    """One few-shot classifier.

    ``update`` must not run concurrently with anything else on the same object (the service updates a copy made
    with ``from_state(to_state())`` and swaps it in); concurrent ``predict_proba`` calls are safe (the cached
    fit is recomputed idempotently at worst). A label's vector is taken the first time one is given for it.
    """

    def __init__(self, dim: int, *, score_scale: float, config: LearnerConfig | None = None):
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = int(dim)
        self.score_scale = float(score_scale)
        self.config = config or LearnerConfig()
        kind = self.config.covariance
        if kind == "auto":
            # the budget decides on the shared scatter only: the class rows cost the same under both kinds, so
            # raising the class limit (up to 256) must not silently degrade the covariance. At the default
            # limit this picks the same kind as before for every dimension of the built-in models.
            fits = _scatter_bytes(self.dim, True) <= self.config.max_state_bytes
            kind = "full" if fits else "diagonal"
        self.covariance = kind
        self._labels: list[str] = []
        self._index: dict[str, int] = {}
        self._n = np.zeros(0, np.float64)
        self._s = np.zeros((0, self.dim), np.float64)
        self._S = np.zeros((self.dim, self.dim) if kind == "full" else self.dim, np.float64)
        self._L = np.zeros((0, self.dim), np.float32)
        self._has_L = np.zeros(0, bool)
        self._declared = np.zeros(0, bool)
        # prequential record of the out-of-scope score: count, sum, sum of squares of the (uncorrected) scores of
        # training inputs, each scored *before* it was learned (FewShotLearner.update). 3 floats, no example.
        self._oos_moments = np.zeros(3, np.float64)
        self._temp, self._label_rec = TemperatureRecord(), LabelRecord(0)  # calibration records, same prequential loop
        self._unl = UnlabeledRecord(0, self.dim)  # what the classified inputs taught it (learn_unlabeled)
        self._stats: dict | None = None
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self._diag: dict = {}

    # ------------------------------------------------------------------ training
    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def counts(self) -> dict[str, float]:
        """Weighted example count per class."""
        return {lab: float(c) for lab, c in zip(self._labels, self._n, strict=True)}

    def _add_class(self, label: str) -> int:
        k = len(self._labels)
        self._labels.append(label)
        self._index[label] = k
        self._n = np.append(self._n, 0.0)
        self._s = np.vstack([self._s, np.zeros((1, self.dim))])
        self._L = np.vstack([self._L, np.zeros((1, self.dim), np.float32)])
        self._has_L = np.append(self._has_L, False)
        self._declared = np.append(self._declared, False)
        self._label_rec.add_class()
        self._unl.add_class()
        return k

    def declare(self, label_vectors: dict[str, np.ndarray]) -> list[str]:
        """Declare classes the classifier must know before (or without) any example of them.

        Each class comes with its label vector (the label name embedded like a zero-shot label). A declared
        class without examples is predicted from its label vector alone: with no examples at all the learner
        scores exactly like zero-shot (``softmax(score_scale * cos(x, label))``); once examples arrive, an
        unseen class's mean is its label-name prior mean and the zero-shot term fades (see ``_fit``).
        Declaring a known class only sets its label vector if it has none. Returns the newly added labels.
        """
        added = []
        for lab, vec in label_vectors.items():
            v = self._label_vector(lab, vec)
            k = self._index.get(lab)
            if k is None:
                k = self._add_class(lab)
                added.append(lab)
            self._declared[k] = True
            if not self._has_L[k]:
                self._L[k] = v
                self._has_L[k] = True
        if added:
            self._cache = None
        return added

    def _label_vector(self, lab: str, vec) -> np.ndarray:
        v = np.asarray(vec, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise ValueError(f"label vector of {lab!r} has dim {v.shape[0]}, expected {self.dim}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"label vector of {lab!r} contains non-finite values")
        return v

    @property
    def num_examples(self) -> float:
        """Total weighted example count N (0 for a classifier that only has declared labels)."""
        return float(self._n.sum())

    @property
    def inputs_learned(self) -> int:
        """Unlabelled inputs folded in by :meth:`learn_unlabeled` (persisted; 0 for states before version 5)."""
        return self._unl.learned

    def learn_unlabeled(self, X: np.ndarray) -> int:
        """Learn from inputs the classifier already answered, without their labels (issue 29).

        ``X``: (n, dim) float32 L2-normalised embeddings, a chunk (typically 8-256 rows; a chunk of one stores that
        input's scaled vector in the sums, so feed at least 8). Each row is given to the declared classes by the
        zero-shot posterior on their label vectors and folded into bounded per-class sums (8 + 8 dim bytes per
        class, whatever the traffic; nothing else is kept), which move the classifier's zero-shot part toward its
        inputs once it has learned ``unlabeled_min_per_class`` inputs per class on average
        (classifiers/fewshot/unlabeled.py). Works with declared labels alone and with labelled examples; the
        labelled statistics are never touched, and the zero-shot part weighs ``N0 / (N + N0)`` once there are N
        labelled examples, so labels outweigh any amount of traffic. Cost O(n K D), no fit.

        Returns the number of rows learned, the increment of :attr:`inputs_learned`: ``n``, or 0 where the
        classifier has no zero-shot part to adapt (no declared label, or a class without its label vector), in
        which case nothing changes. Must not run concurrently with :meth:`update` or anything else on this object
        (the service adapts a copy, as for ``update``). ValueError on a wrong shape or non-finite values.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"X must have shape (n, {self.dim}), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains non-finite values")
        if len(X) == 0 or self._zero_shot(0.0) is None:
            return 0
        cfg = self.config
        self._unl.observe(X, self._L.astype(np.float64), self.score_scale, cfg.unlabeled_sharpness,
                          cfg.unlabeled_class_cap)
        self._cache = None
        return len(X)

    def update(
        self,
        X: np.ndarray,
        y: Sequence[str | Sequence[str]],
        *,
        weight: float = 1.0,
        label_vectors: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Fold a batch into the sufficient statistics. Cost O(n D^2) (full) whatever ``weight`` is.

        Each item of ``y`` is the input's label or a list of all the labels that apply to it (non-empty,
        duplicates collapse; a batch may mix both). Each (input, label) pair is one example of its class: an
        input with k labels counts k times in the scatter (the calibration study's ``dup`` rule).

        Test, then train: before a chunk of the batch is learned, the current model scores it into the
        prequential records (:meth:`_prequential`), honest out-of-sample scores that :meth:`compile` calibrates
        with. Chunks of ``max(8, examples so far)`` inputs (8, 8, 16, 32, ...: one extra fit per chunk, O(log n)
        per call, so a classifier trained in one call is calibrated too), in a fixed pseudo-random order (a batch
        sorted by label would otherwise score each class before any of its examples). The statistics, hence the
        argmax, do not depend on the chunking; the records do. ``config.oos_record = False`` skips them.
        """
        X, sets = self._checked_batch(X, y, weight)
        if X.shape[0] == 0:
            return
        known_before = len(self._labels)  # classes are appended: the first ones are those known before this call
        cls = np.array([self._index[lab] if lab in self._index else self._add_class(lab) for s in sets for lab in s])
        ptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
        for lab, vec in (label_vectors or {}).items():
            k = self._index.get(lab)
            if k is not None and not self._has_L[k]:
                self._L[k] = self._label_vector(lab, vec)
                self._has_L[k] = True
        self._cache = None  # new classes and label vectors change the model the chunks are scored with
        w = float(weight)
        n = len(sets)
        if not self.config.oos_record:
            local, c = cal.label_pairs(ptr, cls, np.arange(n))
            self._learn(X if len(c) == n else X[local], c, w)
            return
        order = np.random.default_rng(n).permutation(n) if n > PREQUENTIAL_MIN_CHUNK else np.arange(n)
        pos = 0
        while pos < n:
            part = order[pos : pos + max(PREQUENTIAL_MIN_CHUNK, int(self.num_examples / w))]
            pos += len(part)
            local, c = cal.label_pairs(ptr, cls, part)
            Xp = X[part]
            # known: declared or seen before this call, or learned from an earlier chunk of it
            known = (np.arange(len(self._labels)) < known_before) | (self._n > 0)
            before_n = self.num_examples
            self._prequential(Xp, local, c, known)
            self._learn(Xp if len(c) == len(part) else Xp[local], c, w)
            self._forget(before_n)
        self._cache = None

    def _checked_batch(
        self, X: np.ndarray, y: Sequence[str | Sequence[str]], weight: float
    ) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """``X`` as float64 and ``y`` as label tuples, every check done before anything changes."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"X must have shape (n, {self.dim}), got {X.shape}")
        if len(y) != X.shape[0]:
            raise ValueError(f"{X.shape[0]} vectors but {len(y)} labels")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be a positive finite number, got {weight}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains non-finite values")
        return X, cal.label_sets(y)

    def _forget(self, before_n: float) -> None:
        """After a chunk is learned the records fade as ``(N_before / N_after) ** recency`` (older: weaker model)."""
        after_n, cfg = self.num_examples, self.config
        if before_n <= 0 or after_n <= before_n:
            return
        if cfg.oos_calibration_recency > 0:
            self._oos_moments *= (before_n / after_n) ** cfg.oos_calibration_recency
        if cfg.calibration_recency > 0:
            self._temp.decay((before_n / after_n) ** cfg.calibration_recency)
        if cfg.label_calibration_recency > 0:
            self._label_rec.decay((before_n / after_n) ** cfg.label_calibration_recency)

    def _prequential(self, X: np.ndarray, local: np.ndarray, cls: np.ndarray, known: np.ndarray) -> None:
        """Score a chunk ``X`` with the current model, before it learns it, into the records. ``(local, cls)`` are
        its (input, label) pairs; ``known`` (K,) flags the classes the model knows (declared or with examples).

        * out-of-scope moments: every input with a known label, assigned to a class with examples;
        * temperature profile: of the first ``MAX_SCORED_ROWS`` inputs (the chunk is shuffled), those with a known
          label: the known classes' logits against all of their known labels;
        * label histograms: the same first inputs, all of them (an input of a class not known yet is a negative
          for every known one, as in traffic), on the logits divided by the temperature fitted so far (so the
          histograms do not drift with the model's scale).
        """
        cols = np.flatnonzero(known)
        N = self.num_examples
        if len(cols) == 0 or (N <= 0 and self._zero_shot() is None):
            return  # nothing known yet, or (declared classes without their label vectors) no model to score with
        A, b = self._fit()
        z = X @ A + b
        Y = np.zeros(z.shape, bool)
        Y[local, cls] = True
        Y &= known
        hit = np.asarray(Y.any(1))
        if N > 0 and hit.any():  # out-of-scope moments
            mean, std = self._gaussian_moments()
            assert mean is not None and std is not None  # num_examples > 0: _fit() computed the statistics
            k = z[hit].argmax(1)
            keep = self._n[k] > 0  # a winner without examples is judged by the zero-shot rule, not this record
            k, zw = k[keep], z[hit][keep]
            sc = (mean[k] - zw[np.arange(len(k)), k]) / std[k]
            self._oos_moments += (len(sc), float(sc.sum()), float(sc @ sc))
        if len(cols) < 2:
            return  # one known class: no choice to calibrate
        zk, Yk = z[:cal.MAX_SCORED_ROWS, cols], Y[:cal.MAX_SCORED_ROWS, cols]
        self._label_rec.observe(zk / self.calibration_temperature, Yk, cols)
        ok = hit[:cal.MAX_SCORED_ROWS]
        self._temp.observe(zk[ok], Yk[ok])

    def _learn(self, X: np.ndarray, idx: np.ndarray, w: float) -> None:
        np.add.at(self._n, idx, w)
        sums = np.zeros_like(self._s)
        np.add.at(sums, idx, X)
        self._s += w * sums
        if self.covariance == "full":
            G = X.T @ X
            G = np.triu(G)
            G = G + np.triu(G, 1).T  # exactly symmetric, so the stored upper triangle restores it bit for bit
            self._S += w * G
        else:
            self._S += w * np.einsum("ij,ij->j", X, X)
        self._cache = None

    # ------------------------------------------------------------------ model
    def _fit(self) -> tuple[np.ndarray, np.ndarray]:
        """Discriminant weights A (D, K) and biases b (K,) from the statistics (cached until the next update).

        Logits are ``x @ A + b`` (already divided by the temperature). With no example at all (only declared
        classes) they are the zero-shot logits ``score_scale * x . l_k``; with declared classes, the
        zero-shot logits are blended in with weight ``N0 / (N + N0)`` (``N0 = zero_shot_pseudo_count``), so the
        classifier moves smoothly from zero-shot to the few-shot model as examples arrive. The zero-shot logits are
        those adapted to the classified inputs (:meth:`learn_unlabeled`), exactly the plain ones without any.
        """
        if self._cache is not None:
            return self._cache
        cfg = self.config
        n, s = self._n, self._s
        N = float(n.sum())
        zs = self._zero_shot()
        if N <= 0:  # only declared classes: (adapted) zero-shot
            self._diag = {"zero_shot_weight": 1.0, "examples": 0.0}
            self._stats = None
            assert zs is not None  # no examples: every class is declared, with its label vector
            self._cache = (zs[0].copy(), zs[1].copy())
            return self._cache
        seen = n > 0
        g = s.sum(0) / N
        cov = self._shrunk_covariance(N, seen, g)
        m0, beta, gate, t2 = self._prior_means(g, seen, cov.sigma2)
        kappa = cfg.prior_strength
        denom = n + kappa
        mu = np.where((denom > 0)[:, None], (s + kappa * m0) / np.where(denom > 0, denom, 1.0)[:, None], m0)
        A, b = self._discriminant(cov.Sigma, mu)
        T = float(cfg.temperature)
        A, b = A / T, b / T
        lam, shrink = 0.0, 1.0
        if zs is not None and cfg.zero_shot_pseudo_count > 0:
            lam = cfg.zero_shot_pseudo_count / (N + cfg.zero_shot_pseudo_count)
            A, b, shrink = self._blend(A, b, lam)
        self._diag = {"beta": beta, "gate": gate, "t2": t2, "nu": cov.nu, "sigma2": cov.sigma2, "temperature": T,
                      "shrinkage": cov.dof0 / (cov.dof + cov.dof0), "zero_shot_weight": lam, "examples": N,
                      "unlabeled_shrink": shrink}
        self._stats = {"Sigma": cov.Sigma, "Sigma_w": cov.within(), "mu": mu, "lam": lam}
        self._cache = (A, b)
        return self._cache

    def _zero_shot(self, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
        """Weights (D, K) and biases (K,) of the zero-shot logits ``score_scale * cos(x, l_k)`` (unit label vectors)
        adapted to the classified inputs (``shrink`` scales the adaptation; classifiers/fewshot/unlabeled.py), where
        the classifier has declared classes and every class has its label vector; else None."""
        if self._declared.any() and self._has_L.all():
            return self._unl.zero_shot(self._L.astype(np.float64), self.score_scale, self.config, shrink)
        return None

    def _blend(self, A: np.ndarray, b: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
        """``(1 - lam)`` of the few-shot logits plus ``lam`` of the adapted zero-shot ones, the adaptation scaled
        back until every labelled class mean keeps the class the unadapted blend gives it (unlabeled.anchored)."""
        def blend(shrink: float) -> tuple[np.ndarray, np.ndarray]:
            zs = self._zero_shot(shrink)
            assert zs is not None
            return (1.0 - lam) * A + lam * zs[0], (1.0 - lam) * b + lam * zs[1]

        if self._unl.empty:
            return (*blend(0.0), 1.0)
        seen = np.flatnonzero(self._n > 0)
        return anchored(blend, self._s[seen] / self._n[seen, None], seen)

    def _shrunk_covariance(self, N: float, seen: np.ndarray, g: np.ndarray) -> _Covariance:
        """The shared within-class covariance, shrunk toward ``nu * I`` with ``dof0`` pseudo degrees of freedom
        (``nu`` the average per-dimension total variance); ``g`` is the grand mean of the N examples."""
        cfg, D = self.config, self.dim
        n, s = self._n, self._s
        Ks = int(seen.sum())
        full = self.covariance == "full"
        inv_n = np.divide(1.0, n, out=np.zeros_like(n), where=seen)
        # within-class scatter W = S - sum_k s_k s_k^T / n_k; total per-dimension variance nu for the prior
        if full:
            W = self._S - (s.T * inv_n) @ s
            tr_total = float(np.trace(self._S)) / N - float(g @ g)
        else:
            W = self._S - np.einsum("kd,kd->d", s, s * inv_n[:, None])
            tr_total = float(self._S.sum()) / N - float(g @ g)
        nu = max(tr_total / D, 1e-8)
        dof = max(N - Ks, 0.0)
        dof0 = cfg.covariance_prior_dof if cfg.covariance_prior_dof is not None else float(D)
        if full:
            Sigma = (W + dof0 * nu * np.eye(D)) / (dof + dof0)
            sigma2 = float(np.trace(Sigma)) / D
        else:
            Sigma = (np.maximum(W, 0.0) + dof0 * nu) / (dof + dof0)
            sigma2 = float(Sigma.mean())
        return _Covariance(W=W, Sigma=Sigma, nu=nu, sigma2=sigma2, dof=dof, dof0=dof0, full=full)

    def _prior_means(self, g: np.ndarray, seen: np.ndarray, sigma2: float) -> tuple[np.ndarray, float, float, float]:
        """Prior class means m0 (K, D) and the label prior's slope beta, gate and t^2.

        The label prior regresses class means on label embeddings, ``m_k - g ~ beta (l_k - lbar)``, gated by
        ``t = beta / se``. Weights n_k: classes without examples (declared) do not enter the regression, but get
        its prediction. Without a usable prior every m0_k is the grand mean g."""
        cfg = self.config
        n, s = self._n, self._s
        m0 = np.tile(g, (len(n), 1))
        beta = gate = t2 = 0.0
        P = self._has_L
        if (P & seen).sum() >= 2 and cfg.prior_strength > 0:
            Lp = self._L[P].astype(np.float64)
            nP = n[P]
            lbar = (nP[:, None] * Lp).sum(0) / nP.sum()
            dl = Lp - lbar
            den = float((nP * np.einsum("kd,kd->k", dl, dl)).sum())
            if den > 1e-12:
                beta = float(np.einsum("kd,kd->", s[P], dl)) / den
                t2 = beta * beta * den / max(sigma2, 1e-12)
                gate = max(0.0, 1.0 - cfg.gate_threshold / t2) if beta > 0 and t2 > 0 else 0.0
                m0[P] = g + gate * beta * dl
        return m0, beta, gate, t2

    def _discriminant(self, Sigma: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LDA weights ``A = Sigma^-1 mu^T`` (D, K) and biases ``b_k = -mu_k . A_k / 2``, before the temperature."""
        if Sigma.ndim == 2:
            try:
                A = np.linalg.solve(Sigma, mu.T)
            except np.linalg.LinAlgError:  # cannot happen with nu > 0, but never fail a prediction
                A = np.linalg.lstsq(Sigma, mu.T, rcond=None)[0]
        else:
            A = (mu / Sigma).T
        b = -0.5 * np.einsum("kd,dk->k", mu, A)
        return A, b

    @property
    def diagnostics(self) -> dict:
        """Prior slope, gate, shrinkage and temperatures of the current fit (for logs and the evaluation)."""
        if not self._labels:
            return {}
        self._fit()
        return {**self._diag, "calibration_temperature": self.calibration_temperature,
                "calibration_rows": self._temp.weight}

    @property
    def calibration_temperature(self) -> float:
        """tau of the served scores ``softmax(z / tau)``, ``z`` the model's logits: fitted by the temperature
        record (:class:`classifiers.fewshot.calibration.TemperatureRecord`); 1 while the record is empty."""
        return self._temp.temperature(self.config.calibration_prior_count)

    def compile(self) -> LinearPredictor:
        """The current classifier as a stand-alone :class:`LinearPredictor` (calibrated scores, no statistics).

        The calibration temperature is folded into the weights (``W = A / tau``, ``b / tau``) and the out-of-scope
        moments (logit units: ``oos_score`` is unchanged), so it costs nothing to serve. The label record gives
        ``label_map`` (32 bin probabilities) and ``label_cuts`` (K cuts on u), both None while it is empty."""
        if not self._labels:
            raise ValueError("the learner has no classes yet: call update() first")
        A, b = self._fit()
        tau = self.calibration_temperature
        mean, std = self._oos_calibration()
        zs_classes = zs_L = None
        if mean is not None:
            idle = np.flatnonzero((self._n <= 0) & self._has_L)
            if len(idle):
                zs_classes, zs_L = idle, np.ascontiguousarray(self._L[idle].T)
        label_map = label_cuts = None
        if not self._label_rec.empty:
            label_map, label_cuts = self._label_rec.bin_probs(), self._label_rec.cuts()
        return LinearPredictor(tuple(self._labels), A / tau, b / tau, mean, std, zs_classes, zs_L,
                               label_map, label_cuts)

    @property
    def oos_correction(self) -> tuple[float, float]:
        """(shift, scale) of the prequential correction: the in-scope out-of-scope score is modelled as
        N(shift, scale^2) in units of the Gaussian calibration, from the out-of-sample scores recorded by
        :meth:`update` and ``oos_calibration_pseudo_count`` pseudo-scores drawn from N(0, 1) (no record: (0, 1))."""
        c, s1, s2 = (float(v) for v in self._oos_moments)
        n0 = float(self.config.oos_calibration_pseudo_count)
        if c + n0 < 2:  # fewer than two scores in all: no spread to measure (pseudo-count 0, one score so far)
            return 0.0, 1.0
        m = s1 / (c + n0)
        var = (s2 + n0) / (c + n0) - m * m
        return m, math.sqrt(max(var, 1e-4))

    def _oos_calibration(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Calibration of :meth:`LinearPredictor.oos_score` in compiled-logit units: the Gaussian in-scope moments
        (:meth:`_oos_gaussian`) corrected by the prequential record. Derived from the training examples' own
        statistics, the Gaussian moments are optimistic in-sample and model-dependent (on CLINC the achieved
        false-alarm rate at a 5% target was 0.25-0.46 for MiniLM and 0.01-0.11 for e5); the record holds the
        same standardised score for inputs scored *before* they were learned, so standardising by its mean
        and deviation (``oos_correction``) makes in-scope scores about N(0, 1) out of sample."""
        mean, std = self._oos_gaussian()
        if mean is None or std is None:
            return None, None
        shift, scale = self.oos_correction
        return mean - shift * std, std * scale

    def _oos_gaussian(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """:meth:`_gaussian_moments` in the compiled predictor's logit units (over the calibration temperature)."""
        mean, std = self._gaussian_moments()
        if mean is None or std is None:
            return None, None
        tau = self.calibration_temperature
        return mean / tau, std / tau

    def _gaussian_moments(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """In-scope mean and standard deviation of each class's own logit ``z_k(x) = A_k . x + b_k`` for a *new*
        input x of class k, from the statistics alone (no example is kept, so there is no held-out set):

        * x ~ N(m_k, Sigma) under the model, with m_k the class's sample mean (its prior mean mu_k when it has
          no example) and Sigma the shrunk shared covariance: mean ``A_k . m_k + b_k``, variance
          ``A_k^T Sigma A_k (1 + 1 / (n_k + kappa))`` (the second term: uncertainty of the class mean);
        * the sample mean is optimistic for a new input (the fit saw its examples): the expected excess
          ``(1 - lambda) * n_k / (n_k + kappa) * tr(Sigma^-1 Sigma_w) / (n_k T)`` is subtracted, Sigma_w the
          within-class covariance, lambda the zero-shot blend weight.

        Linear logits make both exact Gaussian moments, so this costs one D x D solve at compile time and
        2K floats in the predictor. None without examples.
        """
        if self._stats is None:
            return None, None
        st = self._stats
        assert self._cache is not None  # callers _fit() first: the fit that computed _stats
        A, b = self._cache
        Sigma, mu, lam = st["Sigma"], st["mu"], st["lam"]
        n, kappa, T = self._n, self.config.prior_strength, float(self.config.temperature)
        seen = n > 0
        m = np.where(seen[:, None], self._s / np.where(seen, n, 1.0)[:, None], mu)
        mean = np.einsum("kd,dk->k", m, A) + b
        if Sigma.ndim == 2:
            var = np.einsum("dk,de,ek->k", A, Sigma, A)
            Sw = st["Sigma_w"]
            excess_tr = float(np.trace(np.linalg.solve(Sigma, Sw))) if Sw is not None else 0.0
        else:
            var = np.einsum("dk,d,dk->k", A, Sigma, A)
            Sw = st["Sigma_w"]
            excess_tr = float(np.sum(Sw / Sigma)) if Sw is not None else 0.0
        var = var * (1.0 + 1.0 / np.maximum(n + kappa, 1e-12))
        nn = np.where(seen, n, 1.0)
        excess = np.where(seen, (1.0 - lam) * nn / (nn + kappa) * excess_tr / (nn * T), 0.0)
        return mean - excess, np.sqrt(np.maximum(var, 1e-12))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(n, K) the model's logits (divided by ``config.temperature``), columns in ``labels`` order: a function
        of the statistics alone, so independent of the order and split of the examples. The compiled predictor's
        are these over :attr:`calibration_temperature`."""
        if not self._labels:
            raise ValueError("the learner has no classes yet: call update() first")
        A, b = self._fit()
        return LinearPredictor(tuple(self._labels), A, b).decision_function(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, K) the model's own probabilities ``softmax(decision_function(X))``; :meth:`compile` serves them
        calibrated (same argmax)."""
        if not self._labels:
            raise ValueError("the learner has no classes yet: call update() first")
        A, b = self._fit()
        return LinearPredictor(tuple(self._labels), A, b).predict_proba(X)

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict:
        """Everything needed to restore the learner: JSON-able scalars/lists and numpy arrays only (state.py)."""
        return fewshot_state.to_state(self)

    @classmethod
    def from_state(cls, state: dict) -> FewShotLearner:
        fewshot_state.check_version(state)
        cfg = LearnerConfig(**{**state["config"], "covariance": state["covariance"]})
        self = cls(int(state["dim"]), score_scale=float(state["score_scale"]), config=cfg)
        fewshot_state.restore(self, state)
        return self

    def state_nbytes(self) -> int:
        """Bytes of the state's arrays (what a store holds, before compression)."""
        st = self.to_state()
        return int(sum(v.nbytes for v in st.values() if isinstance(v, np.ndarray)))
