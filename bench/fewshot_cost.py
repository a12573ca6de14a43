"""The learner's cost in the few-shot evaluation (bench/eval_fewshot.py): update / predict time and state size.

Measured on random unit vectors, not on the data set, because cost depends only on the dimension, the class
count and the covariance mode: the sizes are exact, the times indicative. The report prints them beside each
model's accuracy (``cost``), at dim 1024 (the state-size fallback) and for 16 to 256 classes (``class_scaling``).
"""
from __future__ import annotations

import time

import numpy as np


def learner_cost(dim: int, score_scale: float, config, classes: int = 16) -> dict:
    """Update / predict cost and state size of one learner (random unit vectors; timing only)."""
    from classifiers.fewshot.learner import FewShotLearner

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1024, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = [f"class {i % classes}" for i in range(1024)]
    lrn = FewShotLearner(dim, score_scale=score_scale, config=config)
    t = time.perf_counter()
    lrn.update(X, y)
    t_update = time.perf_counter() - t
    lrn.update(X[:1], y[:1])
    t = time.perf_counter()
    lrn.predict_proba(X[:1])  # refit after an update
    t_refit = time.perf_counter() - t
    t = time.perf_counter()
    lrn.predict_proba(X[:64])
    t_pred = time.perf_counter() - t
    return {"dim": dim, "classes": classes, "covariance": lrn.covariance, "state_bytes": lrn.state_nbytes(),
            "update_ms_per_1024": 1e3 * t_update, "first_predict_after_update_ms": 1e3 * t_refit,
            "predict_ms_per_64_cached": 1e3 * t_pred}



def class_scaling(dim: int, score_scale: float) -> list[dict]:
    """State and served-predictor size, update and refit time at 16, 64, 150 and 256 classes (random unit
    vectors; sizes are exact, times indicative)."""
    from classifiers.fewshot.learner import FewShotLearner
    from classifiers.fewshot.learner_config import LearnerConfig

    rows = []
    rng = np.random.default_rng(0)
    for K in (16, 64, 150, 256):
        cfg = LearnerConfig(max_classes=K)
        X = rng.normal(size=(4 * K, dim))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        y = [f"class {i % K}" for i in range(len(X))]
        lrn = FewShotLearner(dim, score_scale=score_scale, config=cfg)
        lrn.declare({f"class {i}": X[i] for i in range(K)})
        t = time.perf_counter()
        lrn.update(X, y)
        t_up = time.perf_counter() - t
        t = time.perf_counter()
        pred = lrn.compile()
        t_fit = time.perf_counter() - t
        rows.append({"classes": K, "covariance": lrn.covariance, "state_bytes": lrn.state_nbytes(),
                     "predictor_bytes": pred.nbytes, "update_ms": 1e3 * t_up, "updated": len(X),
                     "compile_ms": 1e3 * t_fit})
    return rows
