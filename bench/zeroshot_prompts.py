"""The zero-shot prompt study of the few-shot evaluation (bench/eval_fewshot.py): label templates, prefixes and
label recipes scored without labeled data.

It lives apart from the learning curves because it asks a different question — how the registry's zero-shot label
vectors should be built (``ModelSpec.label_template``, ``label_prefix``, ``label_templates``, ``score_scale``) — on
the same cached embeddings; the runner stores its rows under ``prompts``, ``recipes`` and ``six_prompt`` and
bench/fewshot_report.py renders them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score

from bench.evaluation import ece, embed, fit_scale, get_spec, label_words, nll, softmax

TEMPLATES = ("{label}", "This is about {label}.", "This text is about {label}.", "A request about {label}.",
             "Topic: {label}")
E5_PREFIXES = ("query: ", "passage: ")
# the candidates of the label-recipe study (recipe_study): greedy forward selection picks among them
RECIPE_POOL = ("{label}", "This is about {label}.", "This text is about {label}.", "A request about {label}.",
               "Topic: {label}", "{label}.", "A question about {label}.", "Intent: {label}", "I want to {label}.",
               "The user asks about {label}.", "Category: {label}", "a request to {label}", "question: {label}",
               "{label}?", "how do I {label}", "can you help me with {label}", "tell me about {label}")


def label_texts(spec_template: str, names: list[str], words: bool = True) -> list[str]:
    """The texts embedded as label vectors: ``names`` in a template, as words (``book_flight`` -> ``book flight``)
    or raw (the opaque ids and the raw-label rows compare the two)."""
    return [spec_template.replace("{label}", label_words(n) if words else n) for n in names]


def prompt_study(model: str, train, test, domains: dict[str, list[str]] | None) -> dict:
    """Zero-shot accuracy per label template / prefix on the domain tasks and the all-label task; the
    NLL-optimal score_scale fitted on the training split; NLL / ECE on the test split."""
    spec = get_spec(model)
    X = embed(model, train.texts + test.texts, "input")
    Xtr, Xte = X[: len(train.texts)], X[len(train.texts):]
    names = sorted(set(train.labels))
    idx = {n: i for i, n in enumerate(names)}
    ytr = np.array([idx[n] for n in train.labels])
    yte = np.array([idx[n] for n in test.labels])
    prefixes = E5_PREFIXES if spec.label_prefix in E5_PREFIXES else (spec.label_prefix,)  # an E5: try both roles
    rows = []
    for pfx in prefixes:
        for tpl in TEMPLATES:
            for words in ((False, True) if tpl == "{label}" else (True,)):
                L = embed(model, label_texts(tpl, names, words), "label", label_prefix=pfx, progress=False)
                row = {"prefix": pfx, "template": tpl, "words": words}
                ctr, cte = Xtr @ L.T, Xte @ L.T
                row["acc_all"] = accuracy_score(yte, cte.argmax(1))
                row["scale_all"] = fit_scale(ctr, ytr)
                P = softmax(row["scale_all"] * cte)
                row["nll_all"], row["ece_all"] = nll(P, yte), ece(P, yte)
                if domains:
                    accs, cz_tr, y_tr, cz_te, y_te = [], [], [], [], []
                    for dn in domains.values():
                        d = np.array([idx[n] for n in dn])
                        mtr, mte = np.isin(ytr, d), np.isin(yte, d)
                        loc = {c: j for j, c in enumerate(d)}
                        cz_tr.append(ctr[mtr][:, d]), y_tr.append(np.array([loc[c] for c in ytr[mtr]]))
                        cz_te.append(cte[mte][:, d]), y_te.append(np.array([loc[c] for c in yte[mte]]))
                        accs.append(accuracy_score(y_te[-1], cz_te[-1].argmax(1)))
                    row["acc_domain"] = float(np.mean(accs))
                    ctr_d, ytr_d = np.concatenate(cz_tr), np.concatenate(y_tr)
                    cte_d, yte_d = np.concatenate(cz_te), np.concatenate(y_te)
                    row["scale_domain"] = fit_scale(ctr_d, ytr_d)
                    P = softmax(row["scale_domain"] * cte_d)
                    row["nll_domain"], row["ece_domain"] = nll(P, yte_d), ece(P, yte_d)
                    P = softmax(spec.score_scale * cte_d)
                    row["nll_domain_registry_scale"], row["ece_domain_registry_scale"] = nll(P, yte_d), ece(P, yte_d)
                row["registry"] = pfx == spec.label_prefix and tpl == spec.label_template and words
                rows.append(row)
    return {"rows": rows, "registry_scale": spec.score_scale}


def six_prompt_check(model: str) -> dict | None:
    """The README's six-prompt example and the clear-cut e2e inputs (tests/serve_app/test_ingress.py), with
    the registry's prompts: how many predictions are sensible."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "serve_app"))
        from test_ingress import CLEAR_CUT, SENSIBLE, SIX_LABELS, SIX_PROMPTS  # type: ignore
    except Exception:  # pragma: no cover - tests not shipped
        return None
    spec = get_spec(model)
    X = embed(model, SIX_PROMPTS, "input", progress=False)
    L = embed(model, label_texts(spec.label_template, SIX_LABELS, False), "label", progress=False)
    pred = [SIX_LABELS[i] for i in (X @ L.T).argmax(1)]
    texts = [t for ts in CLEAR_CUT.values() for t in ts]
    expected = [lab for lab, ts in CLEAR_CUT.items() for _ in ts]
    Xc = embed(model, texts, "input", progress=False)
    Lc = embed(model, label_texts(spec.label_template, list(CLEAR_CUT), False), "label", progress=False)
    predc = [list(CLEAR_CUT)[i] for i in (Xc @ Lc.T).argmax(1)]
    return {"six_sensible": sum(p in ok for p, ok in zip(pred, SENSIBLE, strict=True)), "six_total": len(SENSIBLE),
            "clear_cut": sum(a == b for a, b in zip(predc, expected, strict=True)), "clear_total": len(expected)}


def recipe_study(model: str, train, test, domains: dict[str, list[str]] | None) -> dict:
    """Zero-shot label recipes without labeled data: today's single template, the registry's recipe, and a
    template ensemble chosen by greedy forward selection on the TRAINING split (accuracy 150-way + per domain),
    all scored on the test split. A recipe is adopted in the registry only where it beats the single template
    on both test tasks."""
    from classifiers.catalog.registry import pool_label_vectors

    spec = get_spec(model)
    X = embed(model, train.texts + test.texts, "input")
    Xtr, Xte = X[: len(train.texts)].astype(np.float64), X[len(train.texts):].astype(np.float64)
    names = sorted(set(train.labels))
    idx = {n: i for i, n in enumerate(names)}
    ytr = np.array([idx[n] for n in train.labels])
    yte = np.array([idx[n] for n in test.labels])
    vec = {t: embed(model, label_texts(t, names), "label", progress=False).astype(np.float64) for t in RECIPE_POOL}

    def pooled(ts):
        return np.stack([pool_label_vectors(np.stack([vec[t][j] for t in ts])) for j in range(len(names))])

    def score_fn(f, L, X, y):
        """Accuracy 150-way and mean per domain of argmax f(X @ L.T) (f maps cosines to label scores)."""
        S = f(X @ L.T)
        a_all = accuracy_score(y, S.argmax(1))
        accs = []
        for dn in (domains or {}).values():
            d = np.array([idx[n] for n in dn])
            m = np.isin(y, d)
            loc = {c: j for j, c in enumerate(d)}
            accs.append(accuracy_score(np.array([loc[c] for c in y[m]]), S[m][:, d].argmax(1)))
        return a_all, (float(np.mean(accs)) if accs else float("nan"))

    def score(L, X, y):
        return score_fn(lambda S: S, L, X, y)

    sel: list[str] = []
    best = -1.0
    for _ in range(5):
        cands = [(sum(score(pooled(sel + [t]), Xtr, ytr)), t) for t in RECIPE_POOL if t not in sel]
        sc, t = max(cands)
        if sc <= best:
            break
        best, sel = sc, sel + [t]
    rows = []
    for what, ts in (("single template (before)", (spec.label_template,)),
                     ("registry recipe", spec.label_templates or (spec.label_template,)),
                     ("greedy ensemble (train-selected)", tuple(sel)),
                     ("all candidate templates", RECIPE_POOL)):
        L = pooled(ts)
        tr_all, tr_dom = score(L, Xtr, ytr)
        te_all, te_dom = score(L, Xte, yte)
        rows.append({"what": what, "templates": list(ts), "train_all": tr_all, "train_domain": tr_dom,
                     "test_all": te_all, "test_domain": te_dom})
    # Also tried: standardise each label's cosine by its mean (and deviation) over a generic, label-free reference
    # corpus embedded once per model (bench.evaluation.generic_corpus; not CLINC text, which would leak).
    from bench.evaluation import generic_corpus

    reg_ts = spec.label_templates or (spec.label_template,)
    L = pooled(reg_ts)
    C = embed(model, generic_corpus(), "input", progress=False).astype(np.float64) @ L.T
    mu, sd = C.mean(0), C.std(0)
    for what, f in (("registry recipe - generic-corpus mean (not adopted)", lambda S: S - mu),
                    ("registry recipe, z-scored on the generic corpus (not adopted)", lambda S: (S - mu) / sd)):
        tr_all, tr_dom = score_fn(f, L, Xtr, ytr)
        te_all, te_dom = score_fn(f, L, Xte, yte)
        rows.append({"what": what, "templates": list(reg_ts), "train_all": tr_all, "train_domain": tr_dom,
                     "test_all": te_all, "test_domain": te_dom})
    return {"rows": rows}
