"""The hyper-parameters of the few-shot learner (:class:`classifiers.fewshot.learner.FewShotLearner`)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LearnerConfig"]

OOS_RECENCY_DEFAULT = 1.0  # CLINC: 0 (keep all) 0.050-0.070 false alarms at a 5% target from 64 examples on, 1: 0.057-0.087, 2: 0.061-0.093; synthetic Gaussian classes: 0 gives 0.00, 1 gives 0.01-0.035
OOS_PSEUDO_COUNT_DEFAULT = 1.0  # CLINC: 0-8 tried; small values are closest to the target at 16 examples, equal from 64 on
# Tuned on CLINC *train* only (23 stream + 10 validation examples per intent; mean pooled ECE over both models, per
# domain and 150-way, all protocols): today 0.0274 (worst 0.070); r=2, n0=16: 0.0254 (0.057); r=1, n0=16: 0.0261
# (0.062); r=1, n0=4: 0.0269 (0.078); n0=1: worst 0.081-0.085 (issue 28's calibration study, section 2).
CALIBRATION_RECENCY_DEFAULT = 2.0
CALIBRATION_PRIOR_COUNT_DEFAULT = 16.0
# GoEmotions training stream (study split, 3 seeds, batches of 8), per-label cuts (the earlier 20-pair cut prior;
# the recency choice was not revisited with LabelRecord.cuts' current prior), macro-F1 at 64 / 256 / 1,024 / all:
# recency 1: MiniLM 0.114 / 0.169 / 0.242 / 0.323, e5 0.162 / 0.248 / 0.326 / 0.391 (the study's figures);
# recency 2: MiniLM 0.119 / 0.167 / 0.241 / 0.317, e5 0.164 / 0.246 / 0.324 / 0.386 (and ECE of q >= 0.1 no better).
LABEL_RECENCY_DEFAULT = 1.0
# Learning from classified inputs (issue 29; classifiers/fewshot/unlabeled.py): tuned on CLINC150 *train* streams only
# (declared labels, chunks of 50, 3 seeds, both models, 150-way and per domain, plus streams of a fifth of the
# intents; bench/eval_unlabeled.py --ablations); docs/eval/unlabeled.md reports the test streams.
UNLABELED_PSEUDO_COUNT_DEFAULT = 2.0
UNLABELED_MAX_SHARE_DEFAULT = 0.8
UNLABELED_SHARPNESS_DEFAULT = 1.25
UNLABELED_BIAS_DEFAULT = 0.5
UNLABELED_SCALE_GAIN_DEFAULT = 1.3
UNLABELED_CLASS_CAP_DEFAULT = 1000.0
# minimum evidence: on the train streams, 2 inputs per declared class is the smallest count whose lowest cumulative
# gain over zero-shot at any checkpoint is >= 0 for both models (150-way); 3 costs gain on short streams. The ablation
# table of docs/eval/unlabeled.md (`bench/eval_unlabeled.py --ablations`) has the figures.
UNLABELED_MIN_PER_CLASS_DEFAULT = 2.0


class LearnerConfig(BaseModel):
    """Hyper-parameters of :class:`FewShotLearner`. Defaults were chosen on CLINC150 (docs/eval/report.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prior_strength: float = Field(
        default=4.0, ge=0.0,
        description="Pseudo-examples per class behind the prior class mean (weighted-count units). A class mean "
        "is (s_k + prior_strength * m0_k) / (n_k + prior_strength): the prior dominates a class's first examples "
        "and data overrides it as the class's count grows.",
    )
    covariance_prior_dof: float | None = Field(
        default=None, gt=0.0,
        description="Pseudo degrees of freedom of the isotropic prior on the shared within-class covariance "
        "(shrinkage toward nu*I, nu = average per-dimension total variance). None means `dim`. The shrinkage "
        "weight is dof0 / (dof0 + N - K), so it fades as examples accumulate.",
    )
    gate_threshold: float = Field(
        default=4.0, ge=0.0,
        description="Label-prior gate: the prior's slope beta (how far class means move along their label "
        "embeddings) is used with weight max(0, 1 - gate_threshold / t^2), t = beta / its standard error "
        "(a positive-part James-Stein rule; 4 means the gate starts to open at t = 2, about 95% one-sided "
        "significance). Random or opaque label names give t ~ 0 and switch the prior off.",
    )
    temperature: float = Field(
        default=10.0, gt=0.0,
        description="Softmax temperature of the model: its scores are softmax(LDA logits / temperature). The "
        "plug-in Gaussian logits are over-confident by about 10x on sentence embeddings; 10 minimises test NLL on "
        "CLINC150 for both embedded models at every training-set size from 8 to 495 examples "
        "(docs/eval/report.md). The compiled predictor divides further by each classifier's own fitted "
        "calibration temperature (calibration_recency, calibration_prior_count).",
    )
    covariance: Literal["auto", "full", "diagonal"] = Field(
        default="auto",
        description="Shared covariance kind. `full` keeps the D x D scatter (state ~ 8*D*(D+1)/2 bytes: 591 KB "
        "at D=384); `diagonal` keeps only its diagonal (8*D bytes, lower accuracy); `auto` picks `full` when "
        "the scatter fits `max_state_bytes`, else `diagonal` (e.g. D=1024). Class rows (count, sum, label vector, "
        "flags, 512 B of label-record histograms and the unlabelled count and sum: 8.2 KB per class at D=384, 21 KB "
        "at D=1024) and the "
        "records' fixed 864 B come on top in both kinds.",
    )
    max_state_bytes: int = Field(
        default=1_000_000, gt=0, description="Budget for the shared scatter used by covariance='auto'."
    )
    max_classes: int = Field(
        default=16, gt=1, le=256, description="The service's class limit (Jina's 16 by default, at most 256); informational for "
        "the learner since covariance='auto' budgets the scatter only."
    )
    zero_shot_pseudo_count: float = Field(
        default=4.0, ge=0.0,
        description="For classifiers with declared labels: the zero-shot logits are blended into the few-shot "
        "logits with weight N0 / (N + N0), N the weighted example count, so that a classifier with no examples "
        "is exactly zero-shot and moves smoothly to the few-shot model as examples arrive. 4 keeps the first "
        "few examples (when fewer than two classes have any, so the label-prior slope cannot be estimated) at "
        "zero-shot accuracy; 0 (no blend) is 0.005 better from 8 examples on but collapses at 1-2 examples; "
        "16 and more cost up to 0.02 at 8-32 examples (CLINC domains, docs/eval/report.md).",
    )
    oos_record: bool = Field(
        default=True,
        description="Keep the prequential records (test-then-train, see FewShotLearner.update): the out-of-scope "
        "record, the temperature record and the label record. False skips their extra fits (one per chunk of an "
        "update): the argmax is identical, the out-of-scope calibration is the Gaussian one alone, scores are "
        "the model's own (temperature 1), and the predictor has no multi-label calibration (label_map and "
        "label_cuts None). For accuracy-only evaluations.",
    )
    oos_calibration_recency: float = Field(
        default=OOS_RECENCY_DEFAULT, ge=0.0,
        description="How fast the prequential record forgets: each chunk of new examples multiplies the record "
        "by (N_before / N_after) ** recency, so a score recorded when the classifier had t examples weighs "
        "(t / N) ** recency now. Early scores come from a much weaker model; 0 keeps them all.",
    )
    oos_calibration_pseudo_count: float = Field(
        default=OOS_PSEUDO_COUNT_DEFAULT, ge=0.0,
        description="Pseudo-samples of the N(0, 1) prior behind the prequential correction of the out-of-scope "
        "score (see FewShotLearner.compile): the Gaussian in-scope model is trusted like this many out-of-sample "
        "scores, so a classifier's first few scored examples cannot swing its false-alarm calibration.",
    )
    calibration_recency: float = Field(
        default=CALIBRATION_RECENCY_DEFAULT, ge=0.0,
        description="How fast the temperature and label records forget (classifiers/fewshot/calibration.py): each "
        "learned chunk multiplies them by (N_before / N_after) ** recency, so rows scored when the classifier had "
        "t examples weigh (t / N) ** recency now. The NLL-optimal temperature drifts as the model grows (about "
        "20x along a GoEmotions stream), so the record must follow the current model; 0 keeps everything.",
    )
    calibration_prior_count: float = Field(
        default=CALIBRATION_PRIOR_COUNT_DEFAULT, ge=0.0,
        description="Strength of the Gaussian prior on the log of the fitted temperature, centred on 1 (the "
        "model's own scores): the temperature minimises the record's NLL profile + prior_count * 0.5 * (ln tau)^2, "
        "i.e. the prior weighs like this many scored rows of unit curvature. Keeps a young classifier (a handful "
        "of scored rows) at its model's scores; 1 let the worst CLINC setting reach ECE 0.08.",
    )
    label_calibration_recency: float = Field(
        default=LABEL_RECENCY_DEFAULT, ge=0.0,
        description="How fast the label record (multi-label probabilities and per-label cuts) forgets, like "
        "calibration_recency. It bins the share log-odds of the temperature-calibrated logits, which do not drift "
        "with the model's scale, so it can keep more history: 1 was measured (GoEmotions stream, 2 is up to 0.006 "
        "lower in macro-F1). The label record costs 512 bytes of state per class.",
    )
    unlabeled_pseudo_count: float = Field(
        default=UNLABELED_PSEUDO_COUNT_DEFAULT, gt=0.0,
        description="Learning from classified inputs (FewShotLearner.learn_unlabeled): a class's zero-shot prototype "
        "moves from its label vector toward the mean of the inputs given to it by lam = n / (n + this), n its soft "
        "count of inputs. Per class, so a class the traffic rarely brings keeps most of its label vector.",
    )
    unlabeled_min_per_class: float = Field(
        default=UNLABELED_MIN_PER_CLASS_DEFAULT, ge=0.0,
        description="Minimum evidence: no prototype moves before the classifier has learned this many inputs per "
        "declared class on average (300 for 150 classes); the first inputs, one or two per class, made the "
        "adapted classifier worse than zero-shot.",
    )
    unlabeled_max_share: float = Field(
        default=UNLABELED_MAX_SHARE_DEFAULT, ge=0.0, le=1.0,
        description="Drift limit: the most a prototype moves toward its inputs (the label vector keeps 1 - this).",
    )
    unlabeled_sharpness: float = Field(
        default=UNLABELED_SHARPNESS_DEFAULT, gt=0.0,
        description="Inputs are given to classes by softmax(this * score_scale * cos(x, label)), the zero-shot "
        "posterior (never the adapted model's, so learning cannot feed on its own errors), sharpened by this.",
    )
    unlabeled_bias: float = Field(
        default=UNLABELED_BIAS_DEFAULT, ge=0.0, le=1.0,
        description="Adapted logits score_scale * t * (x . p + bias * (1 - |p|^2) / 2) for a prototype p: 1 is the "
        "Euclidean distance to it, 0 the dot product. Train streams (e5 / MiniLM), 150-way gain after 1,000 inputs: "
        "0: +0.032 / +0.062; 0.5: +0.067 / +0.080; 1: +0.079 / +0.080 but its lowest cumulative gain -0.005 on e5 and "
        "less on a stream of a fifth of the intents (+0.035 / +0.026 vs +0.039 / +0.033).",
    )
    unlabeled_scale_gain: float = Field(
        default=UNLABELED_SCALE_GAIN_DEFAULT, ge=1.0,
        description="Scale of the adapted scores: t = 1 + (gain - 1) * mean share moved, so 1 where nothing was "
        "learned (exactly zero-shot). The moved prototypes' own scores are under-confident. Chosen on CLINC train "
        "streams (declared labels, 3 seeds): the lowest mean ECE over both models, 150-way and per domain, among the "
        "gains that keep every one of those four <= 0.05. ECE 150-way / per domain, e5 then MiniLM: gain 1: "
        "0.057 / 0.012, 0.106 / 0.046; 1.2: 0.034 / 0.026, 0.054 / 0.019; 1.25: 0.034 / 0.031, 0.051 / 0.016; 1.3: "
        "0.036 / 0.035, 0.049 / 0.014; 1.4: 0.044 / 0.043, 0.048 / 0.018.",
    )
    unlabeled_class_cap: float = Field(
        default=UNLABELED_CLASS_CAP_DEFAULT, gt=0.0,
        description="Per-class cap on the soft count of classified inputs: beyond it the class's count and sum are "
        "scaled back to it, so old traffic fades and no input weighs more than 1 / cap of its class.",
    )
