"""Synthetic results folders in the exact trainer contract, with planted effects.

The analysis tests and `python -m benchmarks.report` use this instead of a real sweep (it ships
with `benchmarks`, so the benchmark runs from an installed wheel). Every file is written with the
pyarrow schemas of `trainer.schema`, each part as the trainer writes one (trainer.sink's file schema,
encodings and compression), laid out as a sweep writes it::

    <out>/sweep.json, <out>/trials.parquet
    <out>/metrics/trial_id=<id>/part-<first>-<last>.parquet
    <out>/spectra/trial_id=<id>/part-<first>-<last>.parquet

The PR trajectory of every trial is known in closed form (`SyntheticSpec.share`), so a test can
check a fit against the planted rate, floor and minimum step. Per head, values are the planted
curve times (1 + a_h) with the a_h summing to zero in each layer, so the head average is exactly
the planted curve plus the noise asked for.

    spec = SyntheticSpec(effects={("adamw", "rms"): Effect(loss=-0.05, pr=-0.1)})
    manifest = write_results(spec, tmp_path / "sweep")

Effects may differ per (width, lr) cell (`Effect.loss_cells`, `Effect.pr_cells`, keyed by lr or by
(width, lr)), an arm's LR optimum may move (`Effect.lr_mult`, the optimizer's `best_lr` times
this), and the activation-PR robustness metrics (`pr_centred`, `pr_bias`, `pr_centred_bias`) are
written unless `activation_metrics=False` (results from before the trainer recorded them).

Stages of q and k (`trainer.schema.STAGES`): besides the as-used `q`/`k` the writer records
`q_pre`/`k_pre` (x Wq before any norm) and `q_sphere`/`k_sphere` (unit rows, no gain: the theory's
object), each with every spectrum, axis and activation metric, and `norm_cv` for q_pre/k_pre,
unless `stages=False` (results from before the probe recorded them). The PR share of a stage is
the as-used one plus `SyntheticSpec.sphere_offset` / `pre_offset` at every step (k sits 0.02 above
q at every stage); `Effect.pr` shifts every stage alike and `Effect.pr_stage` one stage only, e.g.
"post-norm PR differs but sphere PR does not"::

    Effect(pr_stage={"as_used": -0.05, "pre": -0.05})

Two LR traps can be planted: `SyntheticSpec.pr_lr_slope` (every stage's final PR share changes
by this per decade of LR relative to 1e-2; with arms whose best LRs differ, PR then differs at the
best LRs only because the LRs do) and `Effect.curvature_mult` (the arm's loss bowl over LR is
flatter or sharper, its minimum unchanged; 0: flat, the best LR set by noise alone).

Every effect, the LR slope included, enters through `SyntheticSpec.ramp` (0 at step 0, 1 at the
last step), so each tensor's init value is the same in every arm and at every LR.

The alternatives to a norm (issue 20): `qk_norms` may hold "qk_clip" and "softcap". Every trial's
largest attention logit before any bound is `SyntheticSpec.raw_logit` per head (5 + 10 (1 - q share)
+ (`logit_growth` + `Effect.logit`) x ramp, times the head factors); `max_logit` records it as it
is, for qk_clip trials min(raw, `qk_clip_tau`) and for softcap trials cap tanh(raw / cap)
(`logit_softcap`). qk_clip trials also get the clip metrics (trainer.schema.CLIP_METRICS) at each
probe after step 0, per head, over the steps since the previous probe: clip_fraction, the share of
those steps whose raw logit exceeded tau, and clip_gamma_min = min(1, tau / largest raw logit).
config_json records `qk_clip_tau` / `logit_softcap` for those trials. An optimizer "muon_per_head" in
`optimizers` is written as trials.parquet optimizer "muon" with `muon_per_head: true` in config_json
(what the trainer writes); `trial_finals` calls it "muon_per_head", as the analysis labels it
(analysis.arms). With none of these, every value written is what it was before.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.schema import (
    ACTIVATION_METRICS,
    ACTIVATION_TENSORS,
    ATTENTION_METRICS,
    AXIS_METRICS,
    CLIP_METRICS,
    EVAL_METRICS,
    METRIC_NAMES,
    METRICS_DIR,
    METRICS_SCHEMA,
    SPECTRA_DIR,
    SPECTRA_SCHEMA,
    SPECTRUM_METRICS,
    STAGE_METRICS,
    STAGES,
    STEP_METRICS,
    SWEEP_JSON,
    TENSORS,
    TRIALS_FILE,
    TRIALS_FILE_SCHEMA,
    WEIGHT_TENSORS,
)
from trainer.sink import FILE_SCHEMAS, WRITE_OPTIONS

# Each rank metric as a share of d_head is the PR share raised to this power (pr itself: 1).
SPEC_POWERS = {"pr": 1.0, "pr_cov": 1.5, "erank": 0.8, "stable_rank": 2.0}
LOSS_INIT = float(np.log(256.0))  # byte-level model at init
MUON_PER_HEAD = "muon_per_head"  # an optimizer of the spec: Muon with per-head orthogonalisation
# What results written before the stages existed hold (stages=False): wq, wk and the as-used q, k.
LEGACY_TENSORS = WEIGHT_TENSORS + STAGES["as_used"]
# The activation tensors the stages added (q_pre, k_pre, q_sphere, k_sphere), in schema order.
STAGE_TENSORS = tuple(t for t in ACTIVATION_TENSORS if t not in STAGES["as_used"])
NORM_CV_TENSORS = STAGES["pre"]  # norm_cv is recorded for the pre-norm q and k
(NORM_CV,) = STAGE_METRICS
K_ABOVE_Q = 0.02  # k's PR share sits this far above q's, at every stage
NORM_CV_K_ABOVE_Q = 0.01  # k_pre's norm_cv sits this far above q_pre's
# trial_finals' columns beyond the legacy ones (the names analysis.finals.final_values uses).
STAGE_PR_COLS = tuple(f"final_pr_{t}" for t in STAGES["sphere"] + STAGES["pre"])
INIT_PR_COLS = tuple(f"init_pr_{t}" for t in TENSORS)  # PR share at step 0
DELTA_PR_COLS = tuple(f"delta_pr_{t}" for t in TENSORS)  # final minus init
NORM_CV_COLS = tuple(f"final_norm_cv_{t}" for t in NORM_CV_TENSORS)
ROBUST_COLS = tuple(f"final_pr_{t}_{kind}" for kind in ("corrected", "centred") for t in STAGES["as_used"])
SPHERE_ROBUST_COLS = tuple(f"final_pr_{t}_{kind}" for kind in ("corrected", "centred") for t in STAGES["sphere"])
# Every column of trial_finals, in order: those from before the stages, then the stages'.
FINALS_COLS = (
    *("trial_id", "optimizer", "qk_norm", "width", "lr", "seed", "depth", "d_head", "steps_planned", "status"),
    *("final_val_loss", "final_pr_q", "final_pr_k", "final_pr_wq", "final_pr_wk", "init_loss"),
    *ROBUST_COLS,
    *("init", "init_std", "init_key"),
    *(STAGE_PR_COLS + INIT_PR_COLS + DELTA_PR_COLS + NORM_CV_COLS + SPHERE_ROBUST_COLS),
)


@dataclass
class Effect:
    """Planted shifts of one (optimizer, qk_norm) arm relative to the baseline."""

    loss: float = 0.0  # final val loss, nats
    pr: float = 0.0  # final PR of q and k, as a share of d_head
    pr_w: float = 0.0  # final PR of wq and wk, as a share of d_head
    rate_mult: float = 1.0  # multiplies the collapse rate
    # per-cell additions, keyed by lr (every width) or by (width, lr)
    loss_cells: dict = field(default_factory=dict)
    pr_cells: dict = field(default_factory=dict)
    lr_mult: float = 1.0  # the arm's loss-optimal LR is the optimizer's best_lr times this
    pr_bias: float = 0.0  # added to the bias-corrected PR share only (pr - pr_bias)
    pr_centred: float = 0.0  # added to the centred PR share only
    # final PR share of one stage only, on top of `pr`: keys "sphere", "pre", "as_used" (q, k)
    pr_stage: dict = field(default_factory=dict)
    norm_cv: float = 0.0  # final norm_cv of q_pre and k_pre
    curvature_mult: float = 1.0  # multiplies lr_curvature for this arm (0: flat loss over LR)
    logit: float = 0.0  # added to SyntheticSpec.logit_growth: the raw max logit's rise by the last step

    def cell(self, table: dict, key: TrialKey) -> float:
        return float(table.get((key.width, key.lr), table.get(key.lr, 0.0)))

    def stage(self, stage: str) -> float:
        """The stage-specific shift of the final PR share (`pr_stage`)."""
        unknown = set(self.pr_stage) - set(STAGES)
        if unknown:
            raise ValueError(f"Effect.pr_stage keys must be among {sorted(STAGES)}, got {sorted(unknown)}")
        return float(self.pr_stage.get(stage, 0.0))


@dataclass(frozen=True)
class TrialKey:
    optimizer: str
    qk_norm: str
    width: int
    lr: float
    seed: int
    init_std: float | None = None  # None: not recorded (config_json without init settings)


@dataclass
class SyntheticSpec:
    name: str = "synthetic"
    optimizers: tuple[str, ...] = ("adamw", "muon")
    qk_norms: tuple[str, ...] = ("none", "rms")
    widths: tuple[int, ...] = (64, 128)
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    init_stds: tuple[float | None, ...] = (None,)  # an init axis (None: not recorded)
    best_lr: dict[str, float] = field(default_factory=lambda: {"adamw": 1e-2, "muon": 3e-2, MUON_PER_HEAD: 3e-2})
    lr_curvature: float = 0.15  # loss rises by this per decade^2 away from the best LR
    init_loss_slope: float = 0.1  # loss changes by this per e-fold of init_std / 0.02
    activation_metrics: bool = True  # write pr_centred, pr_bias, pr_centred_bias
    pr_bias_share: float = 0.02  # PR is biased low by this share of d_head (pr_bias = -this)
    # q/k stages (q_pre, k_pre, q_sphere, k_sphere, norm_cv); False: results from before the probe
    # recorded them (no such rows, and their trial_finals columns are null)
    stages: bool = True
    sphere_offset: float = 0.03  # PR share of q_sphere minus that of the as-used q, at every step
    pre_offset: float = -0.01  # PR share of q_pre minus that of the as-used q, at every step
    norm_cv_init: float = 0.1  # norm_cv of q_pre at step 0 ...
    norm_cv_rise: float = 0.2  # ... and its rise by the last step (through the ramp)
    # every stage's final PR share changes by this per decade of lr relative to 1e-2 (through the
    # ramp: init values do not depend on the LR)
    pr_lr_slope: float = 0.0
    # the alternatives to a norm: the raw max logit rises by logit_growth (+ Effect.logit) through the
    # ramp; qk_clip trials record min(raw, qk_clip_tau) and clip metrics, softcap trials cap tanh(raw / cap)
    logit_growth: float = 0.0
    qk_clip_tau: float = 100.0
    logit_softcap: float = 50.0
    depth: int = 2
    d_head: int = 32
    steps: int = 300  # last step; steps 0..steps are recorded
    eval_every: int = 25
    log_every: int = 1
    tokens_per_step: int = 2048
    effects: dict[tuple[str, str], Effect] = field(default_factory=dict)
    # PR trajectory of q (k sits 0.02 above), as a share of d_head.
    shape: Literal["exp", "u"] = "exp"
    pr_init: float = 0.8
    pr_floor: float = 0.4
    rate_per_1k: float = 10.0  # e-folding rate of the fall, per 1000 steps (at width 64)
    rate_width_exp: float = 0.0  # rate scales as (width / 64) ** this
    rate_noise: float = 0.0  # sd of log(rate) between trials
    min_step: int = 150  # "u": the fall ends here ...
    recovery: float = 0.5  # ... and recovers this share of (initial - minimum) by the last step
    # Noise: per-trial offsets of the final values (part shared by trials with the same seed)
    # and independent noise on every recorded value.
    loss_noise: float = 0.01
    pr_noise: float = 0.01
    seed_shared: float = 0.5
    point_noise: float = 0.0
    # Special trials.
    diverge_if: Callable[[TrialKey], bool] | None = None
    n_running: int = 0  # the last n trials of the grid are still running (half done)
    n_duplicated: int = 0  # trials whose last eval steps were replayed into a later part
    n_truncated: int = 0  # trials whose last metrics part is cut in half on disk
    parts: int = 2
    spectra: Literal["all", "ends", "last", "none"] = "ends"
    sweep_json: bool = True
    finished: bool = True
    n_planned_extra: int = 0  # sweep.json n_trials = grid size + this
    junk_files: bool = True  # temp files a reader must ignore
    rng_seed: int = 0

    # ---- the planted truth ---------------------------------------------------------------
    def grid(self) -> list[TrialKey]:
        return [
            TrialKey(o, q, w, lr, s, i)
            for o in self.optimizers
            for q in self.qk_norms
            for w in self.widths
            for lr in self.lrs
            for s in self.seeds
            for i in self.init_stds
        ]

    def rate(self, key: TrialKey | None = None) -> float:
        """Planted collapse rate per 1k steps of a trial (before rate noise)."""
        if key is None:
            return self.rate_per_1k
        eff = self.effects.get((key.optimizer, key.qk_norm), Effect())
        return self.rate_per_1k * eff.rate_mult * (key.width / 64) ** self.rate_width_exp

    def share(self, t: np.ndarray, rate_per_1k: float | None = None) -> np.ndarray:
        """Planted q PR share of d_head at steps t, before effects and noise."""
        t = np.asarray(t, dtype=float)
        r = (self.rate_per_1k if rate_per_1k is None else rate_per_1k) / 1000.0
        fall = self.pr_floor + (self.pr_init - self.pr_floor) * np.exp(-r * t)
        if self.shape == "exp":
            return fall
        t_min = float(self.min_step)
        m = self.pr_floor + (self.pr_init - self.pr_floor) * np.exp(-r * t_min)
        rise = m + self.recovery * (self.pr_init - m) * (t - t_min) / max(self.steps - t_min, 1.0)
        return np.where(t <= t_min, fall, rise)

    def ramp(self, t: np.ndarray, rate_per_1k: float | None = None) -> np.ndarray:
        """0 at step 0, 1 at the last step; effects and trial noise enter through it, so an
        exponential trajectory keeps its planted rate."""
        r = (self.rate_per_1k if rate_per_1k is None else rate_per_1k) / 1000.0
        return (1 - np.exp(-r * np.asarray(t, float))) / (1 - np.exp(-r * self.steps))

    def final_loss(self, key: TrialKey) -> float:
        """Noise-free final val loss: a bowl in log10(lr) around each optimizer's best LR."""
        eff = self.effects.get((key.optimizer, key.qk_norm), Effect())
        best = np.log10(self.best_lr.get(key.optimizer, 1e-2) * eff.lr_mult)
        init = 0.0 if key.init_std is None else self.init_loss_slope * np.log(key.init_std / 0.02)
        return (
            2.0
            - 0.1 * np.log2(key.width / 64)
            + self.lr_curvature * eff.curvature_mult * (np.log10(key.lr) - best) ** 2
            + eff.loss
            + eff.cell(eff.loss_cells, key)
            + init
        )

    def pr_shift(self, key: TrialKey) -> float:
        """Planted shift of the final q/k PR share of one trial's arm and cell."""
        eff = self.effects.get((key.optimizer, key.qk_norm), Effect())
        return eff.pr + eff.cell(eff.pr_cells, key)

    def lr_shift(self, key: TrialKey) -> float:
        """Planted shift of every stage's final PR share from the trial's LR (`pr_lr_slope`)."""
        return self.pr_lr_slope * float(np.log10(key.lr / 1e-2)) if self.pr_lr_slope else 0.0

    def stage_shares(self, key: TrialKey, base, ramp, pr_off: float = 0.0) -> dict[str, np.ndarray]:
        """The q PR share of each stage ("pre", "sphere", "as_used") given the planted curve
        `base` and `ramp` at some steps (k: + K_ABOVE_Q); `pr_off` is the trial's noise."""
        eff = self.effects.get((key.optimizer, key.qk_norm), Effect())
        common = self.pr_shift(key) + pr_off + self.lr_shift(key)
        return self._stage_curves(base, ramp, common, {stage: eff.stage(stage) for stage in STAGES})

    def _stage_curves(self, base, ramp, common, shift: dict) -> dict[str, np.ndarray]:
        """`stage_shares` from the shift of every stage (`common`) and of each (`shift`); scalars
        for one trial, or arrays that broadcast against base and ramp for many."""
        return {
            "as_used": base + (common + shift["as_used"]) * ramp,
            "sphere": base + self.sphere_offset + (common + shift["sphere"]) * ramp,
            "pre": base + self.pre_offset + (common + shift["pre"]) * ramp,
        }

    def raw_logit(self, key: TrialKey, q_share, ramp) -> np.ndarray:
        """The largest attention logit before any clip or cap (head mean; per head times the head
        factors), given the as-used q PR share and the ramp at some steps."""
        eff = self.effects.get((key.optimizer, key.qk_norm), Effect())
        return 5 + 10 * (1 - q_share) + (self.logit_growth + eff.logit) * ramp

    def recorded_logit(self, key: TrialKey, raw) -> np.ndarray:
        """What max_logit records from the raw logit: the logit entering the softmax (after the cap for
        softcap, at most tau for qk_clip, raw otherwise)."""
        if key.qk_norm == "qk_clip":
            return np.minimum(raw, self.qk_clip_tau)
        if key.qk_norm == "softcap":
            return self.logit_softcap * np.tanh(raw / self.logit_softcap)
        return raw

    def norm_cv(self, key: TrialKey, ramp) -> np.ndarray:
        """Planted norm_cv of q_pre (k_pre: + NORM_CV_K_ABOVE_Q) at the steps of `ramp`."""
        eff = self.effects.get((key.optimizer, key.qk_norm), Effect())
        return self._norm_cv_curve(ramp, eff.norm_cv)

    def _norm_cv_curve(self, ramp, shift):
        return self.norm_cv_init + (self.norm_cv_rise + shift) * ramp


def written_optimizer(optimizer: str) -> str:
    """trials.parquet's optimizer: "muon" for the spec's "muon_per_head" (config_json says per head)."""
    return "muon" if optimizer == MUON_PER_HEAD else optimizer


def trial_id(key: TrialKey) -> str:
    tag = f"{written_optimizer(key.optimizer)}_{key.qk_norm}_w{key.width}_lr{key.lr:.0e}_s{key.seed}"
    if key.init_std is not None:
        tag += f"_i{key.init_std:g}"
    hashed = tag + ("_per_head" if key.optimizer == MUON_PER_HEAD else "")  # the config differs: so does the hash
    return f"{tag}_{zlib.crc32(hashed.encode()):08x}"


# ---- per-trial values ---------------------------------------------------------------------
@dataclass
class _Trial:
    key: TrialKey
    trial_id: str
    status: str
    last_step: int  # last step recorded
    loss_off: float  # noise added to the final val loss
    pr_off: float  # noise added to the final q/k PR share
    rate: float  # collapse rate per 1k steps
    diverged_step: int | None = None


def _trial_noise(spec: SyntheticSpec, keys: list[TrialKey], rng: np.random.Generator):
    """Per-trial offsets: sqrt(seed_shared) of the variance is shared by trials with one seed."""
    seeds = sorted(set(k.seed for k in keys))
    shared = {s: rng.standard_normal(2) for s in seeds}
    a, b = np.sqrt(spec.seed_shared), np.sqrt(1 - spec.seed_shared)
    own = rng.standard_normal((len(keys), 2))
    z = np.array([a * shared[k.seed] for k in keys]) + b * own
    return z[:, 0] * spec.loss_noise, z[:, 1] * spec.pr_noise


def plan_trials(spec: SyntheticSpec) -> list[_Trial]:
    rng = np.random.default_rng(spec.rng_seed)
    keys = spec.grid()
    loss_off, pr_off = _trial_noise(spec, keys, rng)
    rate_z = rng.standard_normal(len(keys))
    trials = []
    n = len(keys)
    for i, key in enumerate(keys):
        status, last, div = "completed", spec.steps, None
        if spec.diverge_if is not None and spec.diverge_if(key):
            status = "diverged"
            div = last = spec.eval_every * max(1, (spec.steps // spec.eval_every) // 3)
        elif i >= n - spec.n_running:
            status = "running"
            last = spec.eval_every * max(1, (spec.steps // spec.eval_every) // 2)
        rate = spec.rate(key) * float(np.exp(spec.rate_noise * rate_z[i]))
        trials.append(_Trial(key, trial_id(key), status, last, loss_off[i], pr_off[i], rate, div))
    return trials


def trial_finals(spec: SyntheticSpec) -> list[dict]:
    """The per-trial final values the writer would record, without writing anything.

    Rows have the columns `analysis.finals.final_values` returns, so statistics can be tested
    on many simulated sweeps in memory (the 50-null-datasets test): the legacy ones, then
    STAGE_PR_COLS, INIT_PR_COLS, DELTA_PR_COLS, NORM_CV_COLS and SPHERE_ROBUST_COLS (null where
    the spec records no such rows: `stages=False`, `activation_metrics=False`).
    """
    trials = plan_trials(spec)
    n, act, stages = len(trials), spec.activation_metrics, spec.stages
    keys = [tr.key for tr in trials]
    no_effect = Effect()
    effs = [spec.effects.get((k.optimizer, k.qk_norm), no_effect) for k in keys]
    col = lambda values: np.array(values, float)[:, None]  # noqa: E731  (n, 1), against (n, 2)
    pr_off, rate = col([tr.pr_off for tr in trials]), col([tr.rate for tr in trials])
    t = np.concatenate([np.zeros((n, 1)), col([tr.last_step for tr in trials])], axis=1)  # init, final
    base, ramp = spec.share(t, rate), spec.ramp(t, rate)  # (n, 2)
    common = col([spec.pr_shift(k) for k in keys]) + pr_off + col([spec.lr_shift(k) for k in keys])
    shift = {stage: col([e.stage(stage) for e in effs]) for stage in STAGES}
    sh = spec._stage_curves(base, ramp, common, shift)
    w = _w_share(base) + (col([e.pr_w for e in effs]) + 0.5 * pr_off) * ramp
    pr = {"wq": w, "wk": w + 0.01}  # tensor -> (n, 2) PR share at init and at the end
    for stage in ("as_used", *(("sphere", "pre") if stages else ())):
        tq, tk = STAGES[stage]
        pr[tq], pr[tk] = sh[stage], sh[stage] + K_ABOVE_Q
    r = ramp[:, 1]  # at the end
    pr_bias, pr_centred = col([e.pr_bias for e in effs])[:, 0] * r, col([e.pr_centred for e in effs])[:, 0] * r

    def robust(q_share):  # bias-corrected (pr - pr_bias) and centred PR share, q then k
        corr, cent = q_share + spec.pr_bias_share + pr_bias, _centred(q_share) + pr_centred
        return corr, corr + K_ABOVE_Q, cent, cent + K_ABOVE_Q

    q, none = pr["q"][:, 1], [None] * n
    cols = {"final_pr_q": q, "final_pr_k": q + K_ABOVE_Q, "final_pr_wq": pr["wq"][:, 1], "final_pr_wk": pr["wk"][:, 1]}
    cols |= dict(zip(ROBUST_COLS, robust(q) if act else (none,) * 4))
    # the columns the stages added, in analysis.finals' order (null where not recorded)
    cols |= {f"init_pr_{t_}": pr[t_][:, 0] if t_ in pr else none for t_ in TENSORS}
    cols |= {f"delta_pr_{t_}": pr[t_][:, 1] - pr[t_][:, 0] if t_ in pr else none for t_ in TENSORS}
    cols |= dict.fromkeys(STAGE_PR_COLS + NORM_CV_COLS + SPHERE_ROBUST_COLS, none)
    if stages:
        cols |= {f"final_pr_{t_}": pr[t_][:, 1] for t_ in STAGES["sphere"] + STAGES["pre"]}
        cv = spec._norm_cv_curve(r, col([e.norm_cv for e in effs])[:, 0])
        cols |= dict(zip(NORM_CV_COLS, (cv, cv + NORM_CV_K_ABOVE_Q)))
        if act:
            cols |= dict(zip(SPHERE_ROBUST_COLS, robust(pr[STAGES["sphere"][0]][:, 1])))
    cols = {c: v.tolist() if isinstance(v, np.ndarray) else v for c, v in cols.items()}

    inits = [None if k.init_std is None else "normal" for k in keys]
    cols |= {
        "trial_id": [tr.trial_id for tr in trials],
        "optimizer": [k.optimizer for k in keys],
        "qk_norm": [k.qk_norm for k in keys],
        "width": [k.width for k in keys],
        "lr": [k.lr for k in keys],
        "seed": [k.seed for k in keys],
        "depth": [spec.depth] * n,
        "d_head": [spec.d_head] * n,
        "steps_planned": [spec.steps] * n,
        "status": [tr.status for tr in trials],
        "final_val_loss": [
            spec.final_loss(tr.key) + tr.loss_off if tr.status == "completed" else None for tr in trials
        ],
        "init_loss": [LOSS_INIT] * n,
        "init": inits,
        "init_std": [k.init_std for k in keys],
        "init_key": [f"{i or '?'}:{'?' if k.init_std is None else k.init_std}" for i, k in zip(inits, keys)],
    }
    return [dict(zip(FINALS_COLS, values)) for values in zip(*(cols[c] for c in FINALS_COLS))]


def _centred(q_share):
    """Centred PR sits a little below the uncentred one (the mean direction is removed)."""
    return q_share - 0.05


def _w_share(q_share):
    """Weight PR falls less than activation PR: an affine map keeps rate and minimum step."""
    return 0.92 - 0.5 * (0.8 - q_share)


# ---- key columns, built once per (heads) and reused for every trial -------------------------
@dataclass
class _Template:
    step: np.ndarray
    layer: pa.Array
    head: pa.Array
    name: pa.Array
    tensor: pa.Array
    n_log: int  # rows of the step block (first), then the eval block


def row_template(spec: SyntheticSpec, n_heads: int) -> _Template:
    L, H = spec.depth, n_heads
    log_steps = np.arange(0, spec.steps + 1, spec.log_every)
    if log_steps[-1] != spec.steps:
        log_steps = np.append(log_steps, spec.steps)
    ev = eval_steps(spec)
    names = list(METRIC_NAMES)
    tensors = list(TENSORS)
    nid = {n: i for i, n in enumerate(names)}
    (val_loss,) = EVAL_METRICS
    (axis_share,) = AXIS_METRICS
    # step block: (S, 5)
    s_step = np.repeat(log_steps, len(STEP_METRICS))
    s_name = np.tile([nid[n] for n in STEP_METRICS], len(log_steps))
    s_null = np.full(s_step.size, -1)
    # eval block, per eval step: val_loss, then (metric, tensor, layer, head) for wq, wk, q, k,
    # (q/k, layer, head) of axis_share, (metric, q/k, layer, head) of the activation metrics,
    # (attention metric, layer, head), then the stages' rows (see `_stage_block`): the same order
    # `_values` builds.
    lh_layer = np.repeat(np.arange(L), H)
    lh_head = np.tile(np.arange(H), L)
    per_name = [nid[val_loss]]
    per_tensor, per_layer, per_head = [-1], [-1], [-1]
    for m in SPECTRUM_METRICS:
        for ti in (TENSORS.index(t) for t in LEGACY_TENSORS):
            per_name += [nid[m]] * (L * H)
            per_tensor += [ti] * (L * H)
            per_layer += list(lh_layer)
            per_head += list(lh_head)
    for ti in (TENSORS.index("q"), TENSORS.index("k")):
        per_name += [nid[axis_share]] * (L * H)
        per_tensor += [ti] * (L * H)
        per_layer += list(lh_layer)
        per_head += list(lh_head)
    for m in ACTIVATION_METRICS if spec.activation_metrics else ():
        for ti in (TENSORS.index("q"), TENSORS.index("k")):
            per_name += [nid[m]] * (L * H)
            per_tensor += [ti] * (L * H)
            per_layer += list(lh_layer)
            per_head += list(lh_head)
    for m in ATTENTION_METRICS:
        per_name += [nid[m]] * (L * H)
        per_tensor += [-1] * (L * H)
        per_layer += list(lh_layer)
        per_head += list(lh_head)
    for m, t in _stage_rows(spec):
        per_name += [nid[m]] * (L * H)
        per_tensor += [TENSORS.index(t)] * (L * H)
        per_layer += list(lh_layer)
        per_head += list(lh_head)
    E, P = len(ev), len(per_name)
    e_step = np.repeat(ev, P)
    step = np.concatenate([s_step, e_step]).astype(np.int64)
    name_i = np.concatenate([s_name, np.tile(per_name, E)])
    tensor_i = np.concatenate([s_null, np.tile(per_tensor, E)])
    layer_i = np.concatenate([s_null, np.tile(per_layer, E)])
    head_i = np.concatenate([s_null, np.tile(per_head, E)])

    def dict_col(idx, values):
        ind = pa.array(idx, pa.int32(), mask=idx < 0)
        return pa.DictionaryArray.from_arrays(ind, pa.array(values, pa.string())).cast(pa.string())

    def int_col(idx):
        return pa.array(idx, pa.int16(), mask=idx < 0)

    return _Template(
        step, int_col(layer_i), int_col(head_i), dict_col(name_i, names), dict_col(tensor_i, tensors), s_step.size
    )


def _stage_rows(spec: SyntheticSpec) -> list[tuple[str, str]]:
    """(metric, tensor) of the stages' rows per eval step, each for every layer and head, in the
    order `_stage_block` builds: spectrum metrics, axis_share, activation metrics, norm_cv."""
    if not spec.stages:
        return []
    acts = AXIS_METRICS + (ACTIVATION_METRICS if spec.activation_metrics else ())
    return (
        [(m, t) for m in SPECTRUM_METRICS for t in STAGE_TENSORS]
        + [(m, t) for m in acts for t in STAGE_TENSORS]
        + [(NORM_CV, t) for t in NORM_CV_TENSORS]
    )


def eval_steps(spec: SyntheticSpec) -> np.ndarray:
    ev = np.arange(0, spec.steps + 1, spec.eval_every)
    return ev if ev[-1] == spec.steps else np.append(ev, spec.steps)


def _head_factors(L: int, H: int, rng: np.random.Generator) -> np.ndarray:
    """(L, H) factors 1 + a with a summing to zero within each layer."""
    a = rng.uniform(-0.1, 0.1, (L, H))
    return 1 + a - a.mean(axis=1, keepdims=True)


def _decay(t: np.ndarray, steps: int) -> np.ndarray:
    """1 at step 0, 0 at the last step: the loss reaches its planted final value exactly."""
    tau = steps / 7.5
    return (np.exp(-t / tau) - np.exp(-steps / tau)) / (1 - np.exp(-steps / tau))


def _values(
    spec: SyntheticSpec, tr: _Trial, tpl: _Template, H: int, rng, rng_stage=None
) -> tuple[np.ndarray, np.ndarray]:
    """The value column, in the template's row order, and the (L, H) head factors. The stages' point
    noise is drawn from `rng_stage`, so the legacy rows are the same with and without stages."""
    k, L, D = tr.key, spec.depth, spec.d_head
    eff = spec.effects.get((k.optimizer, k.qk_norm), Effect())
    # step block (S, 5): train_loss, lr, grad_norm, tokens, wall_s
    s = tpl.step[: tpl.n_log : len(STEP_METRICS)].astype(float)
    final = spec.final_loss(k) + tr.loss_off
    loss = final + (LOSS_INIT - final) * _decay(s, spec.steps)
    sched = k.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / spec.steps)))
    step_block = np.stack(
        [
            loss + 0.02 * rng.standard_normal(s.size),
            sched,
            1.0 + 0.1 * rng.random(s.size),
            s * spec.tokens_per_step,
            s * 0.08,
        ],
        axis=1,
    )
    # eval block
    ev = eval_steps(spec).astype(float)
    E = ev.size
    val = final + (LOSS_INIT - final) * _decay(ev, spec.steps)
    ramp, base = spec.ramp(ev, tr.rate), spec.share(ev, tr.rate)
    shares = spec.stage_shares(k, base, ramp, tr.pr_off)
    q = shares["as_used"]  # (E,)
    w = _w_share(base) + (eff.pr_w + 0.5 * tr.pr_off) * ramp
    base = np.stack([w, w + 0.01, q, q + K_ABOVE_Q], axis=1)  # (E, 4) in LEGACY_TENSORS order
    fac = _head_factors(L, H, rng)  # (L, H)
    # (E, 4 metrics, 4 tensors), metrics in SPECTRUM_METRICS order
    spec_vals = np.stack([base ** SPEC_POWERS[m] for m in SPECTRUM_METRICS], axis=1)
    spec_vals = D * spec_vals[..., None, None] * fac  # (E, 4, 4, L, H)
    if spec.point_noise:
        spec_vals = spec_vals + D * spec.point_noise * rng.standard_normal(spec_vals.shape)
    axis = (1 / D + 0.3 * (1 - base[:, 2:]))[..., None, None] * fac  # (E, 2, L, H)
    raw = spec.raw_logit(k, q, ramp)[:, None, None] * fac  # (E, L, H): the largest logit before any bound
    attn = np.stack([np.broadcast_to(2.0 * fac, raw.shape), spec.recorded_logit(k, raw)], axis=1)
    blocks = [val[:, None], spec_vals.reshape(E, -1), axis.reshape(E, -1)]
    if spec.activation_metrics:
        # (E, 3 metrics, 2 tensors) in ACTIVATION_METRICS x (q, k) order, in units of PR
        bias = -(spec.pr_bias_share + eff.pr_bias * ramp)
        cent = _centred(q) + eff.pr_centred * ramp
        act = np.stack(
            [np.stack([cent, cent + 0.02], 1), np.stack([bias, bias], 1), np.stack([0.5 * bias, 0.5 * bias], 1)], axis=1
        )
        blocks.append((D * act[..., None, None] * fac).reshape(E, -1))
    blocks.append(attn.reshape(E, -1))
    if spec.stages:
        blocks.append(_stage_block(spec, k, eff, shares, ramp, fac, rng_stage))
    eval_block = np.concatenate(blocks, axis=1)
    out = np.concatenate([step_block.ravel(), eval_block.ravel()])
    if tr.status == "diverged":  # the loss blows up at the last recorded step
        last = (tpl.step == tr.last_step) & (tpl.name.to_numpy(zero_copy_only=False) == "train_loss")
        out[last] = np.nan
    return out, fac


def _clip_table(spec: SyntheticSpec, tr: _Trial, fac: np.ndarray) -> pa.Table | None:
    """A qk_clip trial's clip metrics (CLIP_METRICS) per layer and head at each probe after step 0 up
    to its last step, over the optimizer steps since the previous probe (None for other trials):
    clip_fraction = the share of those steps t (previous probe < t <= probe) whose raw logit exceeded
    tau, clip_gamma_min = min(1, tau / their largest raw logit)."""
    k = tr.key
    if k.qk_norm != "qk_clip":
        return None
    ev = eval_steps(spec)
    ev = ev[(ev > 0) & (ev <= tr.last_step)]
    if ev.size == 0:
        return None
    t = np.arange(0, int(ev[-1]) + 1, dtype=float)
    q = spec.stage_shares(k, spec.share(t, tr.rate), spec.ramp(t, tr.rate), tr.pr_off)["as_used"]
    raw = spec.raw_logit(k, q, spec.ramp(t, tr.rate))[:, None, None] * fac  # (T, L, H)
    tau = spec.qk_clip_tau
    rows = {"step": [], "name": [], "layer": [], "head": [], "value": []}
    L, H = fac.shape
    prev = 0
    for s in ev.astype(int):
        span = raw[prev + 1 : s + 1]  # the steps since the previous probe
        frac = (span > tau).mean(axis=0)
        gamma = np.minimum(1.0, tau / span.max(axis=0))
        for name, v in zip(CLIP_METRICS, (frac, gamma)):
            rows["step"] += [int(s)] * (L * H)
            rows["name"] += [name] * (L * H)
            rows["layer"] += list(np.repeat(np.arange(L), H))
            rows["head"] += list(np.tile(np.arange(H), L))
            rows["value"] += list(v.ravel())
        prev = int(s)
    n = len(rows["step"])
    return pa.table(
        {
            "trial_id": pa.repeat(pa.scalar(tr.trial_id), n),
            "step": pa.array(rows["step"], pa.int64()),
            "name": pa.array(rows["name"], pa.string()),
            "layer": pa.array(rows["layer"], pa.int16()),
            "head": pa.array(rows["head"], pa.int16()),
            "tensor": pa.nulls(n, pa.string()),
            "value": pa.array(rows["value"], pa.float64()),
        },
        schema=METRICS_SCHEMA,
    )


def _stage_block(spec: SyntheticSpec, key: TrialKey, eff: Effect, shares: dict, ramp, fac, rng) -> np.ndarray:
    """(E, rows) values of the stages' rows in `_stage_rows` order, built as q/k's are: per head
    the stage's curve times the head factors, so head averages are the planted stage curves."""
    D = spec.d_head
    by_tensor = {}
    for stage in ("pre", "sphere"):
        tq, tk = STAGES[stage]
        by_tensor[tq], by_tensor[tk] = shares[stage], shares[stage] + K_ABOVE_Q
    S = np.stack([by_tensor[t] for t in STAGE_TENSORS], axis=1)  # (E, T) PR shares
    E = S.shape[0]
    spec_vals = D * np.stack([S ** SPEC_POWERS[m] for m in SPECTRUM_METRICS], axis=1)[..., None, None] * fac
    if spec.point_noise:
        spec_vals = spec_vals + D * spec.point_noise * rng.standard_normal(spec_vals.shape)
    acts = [1 / D + 0.3 * (1 - S)]  # axis_share
    if spec.activation_metrics:  # pr_centred, pr_bias, pr_centred_bias in units of PR
        bias = np.broadcast_to(-(spec.pr_bias_share + eff.pr_bias * ramp)[:, None], S.shape)
        acts += [D * (_centred(S) + eff.pr_centred * ramp[:, None]), D * bias, D * 0.5 * bias]
    act = np.stack(acts, axis=1)[..., None, None] * fac  # (E, A, T, L, H)
    cv = spec.norm_cv(key, ramp)
    cvs = np.stack([cv, cv + NORM_CV_K_ABOVE_Q], axis=1)[..., None, None] * fac  # (E, 2, L, H)
    return np.concatenate([spec_vals.reshape(E, -1), act.reshape(E, -1), cvs.reshape(E, -1)], axis=1)


def _spectra_table(spec: SyntheticSpec, tr: _Trial, H: int, steps: np.ndarray) -> pa.Table:
    L, D = spec.depth, spec.d_head
    tensors = TENSORS if spec.stages else LEGACY_TENSORS
    T = len(tensors)
    rows = len(steps) * T * L * H
    decay = np.exp(-np.arange(D) / (D * spec.pr_floor))
    sigma = np.tile(decay.astype(np.float32), rows)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * D)
    return pa.table(
        {
            "trial_id": pa.repeat(pa.scalar(tr.trial_id), rows),
            "step": pa.array(np.repeat(steps, T * L * H).astype(np.int64)),
            "layer": pa.array(np.tile(np.repeat(np.arange(L), H), len(steps) * T), pa.int16()),
            "head": pa.array(np.tile(np.arange(H), len(steps) * T * L), pa.int16()),
            "tensor": pa.array(np.tile(np.repeat(tensors, L * H), len(steps))),
            "sigma": pa.ListArray.from_arrays(offsets, pa.array(sigma)),
        },
        schema=SPECTRA_SCHEMA,
    )


# ---- writing --------------------------------------------------------------------------------
def _write(table: pa.Table, path: Path, mtime: float) -> None:
    """A part file as the trainer writes one (trainer.sink: trial_id dictionary-typed, its
    encodings and compression), so that a benchmark reads what a real study's report reads."""
    dataset = path.parent.parent.name  # <results>/<metrics|spectra>/trial_id=<id>/<part>
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(FILE_SCHEMAS[dataset]), path, **WRITE_OPTIONS[dataset])
    os.utime(path, (mtime, mtime))


def _part_name(first: int, last: int) -> str:
    return f"part-{first:09d}-{last:09d}.parquet"


def write_results(spec: SyntheticSpec, out: str | os.PathLike) -> dict:
    """Write one sweep folder; returns a manifest of what was planted (for tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.rng_seed + 1)
    rng_stage = np.random.default_rng([spec.rng_seed, 2])  # the stages' point noise (own stream)
    trials = plan_trials(spec)
    templates: dict[int, _Template] = {}
    t0 = 1.7e9  # fixed mtimes: part order on disk is part of what is tested
    manifest = {
        "duplicate_rows": 0,
        "truncated": [],
        "duplicated_trials": [],
        "metric_rows": 0,
        "spectra_rows": 0,
        "n_trials": len(trials),
    }
    done = [t.trial_id for t in trials if t.status == "completed"]
    dup_ids = set(done[: spec.n_duplicated])  # first completed trials get a replayed part
    trunc_ids = set(done[::-1][: spec.n_truncated])  # last completed trials lose their last part
    for n, tr in enumerate(trials):
        H = tr.key.width // spec.d_head
        tpl = templates.setdefault(H, row_template(spec, H))
        values, fac = _values(spec, tr, tpl, H, rng, rng_stage)
        table = pa.Table.from_arrays(
            [
                pa.repeat(pa.scalar(tr.trial_id), len(values)),
                pa.array(tpl.step),
                tpl.name,
                tpl.layer,
                tpl.head,
                tpl.tensor,
                pa.array(values),
            ],
            schema=METRICS_SCHEMA,
        )
        clip = _clip_table(spec, tr, fac)
        if clip is not None:  # qk_clip trials: the clip metrics after the template's rows
            table = pa.concat_tables([table, clip])
        step = table.column("step").to_numpy()
        bounds = np.linspace(0, tr.last_step, spec.parts + 1).round().astype(int)
        folder = out / METRICS_DIR / f"trial_id={tr.trial_id}"
        mtime = t0 + n
        written = []
        for p in range(spec.parts):
            lo, hi = (bounds[p] + (p > 0)), bounds[p + 1]
            mask = (step >= lo) & (step <= hi)
            part = table.filter(pa.array(mask))
            if tr.trial_id in dup_ids and p == spec.parts - 1:
                # a crash after this part was written, a restore from an earlier checkpoint and a
                # replay: the stale values (here +1) are overwritten by the replayed part below
                stale = part.set_column(6, "value", pa.array(part.column("value").to_numpy() + 1.0))
                part = stale
            path = folder / _part_name(lo, hi)
            _write(part, path, mtime + p * 0.01)
            written.append(path)
            manifest["metric_rows"] += part.num_rows
        if tr.trial_id in dup_ids:
            replay_lo = int(bounds[-2] + 1)
            mask = (step >= replay_lo) & (step <= tr.last_step)
            replay = table.filter(pa.array(mask))
            name = _part_name(replay_lo, tr.last_step).replace(".parquet", "-replay.parquet")
            _write(replay, folder / name, mtime + 0.5)
            manifest["duplicate_rows"] += replay.num_rows
            manifest["metric_rows"] += replay.num_rows
            manifest["duplicated_trials"].append(tr.trial_id)
        if tr.trial_id in trunc_ids:
            last = written[-1]
            data = last.read_bytes()
            last.write_bytes(data[: len(data) // 2])
            manifest["truncated"].append(str(last))
        if spec.spectra != "none":
            ev = eval_steps(spec)
            ev = ev[ev <= tr.last_step]
            steps = {"all": ev, "ends": np.unique([ev[0], ev[-1]]), "last": ev[-1:]}[spec.spectra]
            st = _spectra_table(spec, tr, H, steps)
            _write(st, out / SPECTRA_DIR / f"trial_id={tr.trial_id}" / _part_name(steps[0], steps[-1]), mtime)
            manifest["spectra_rows"] += st.num_rows
        if spec.junk_files and n == 0:
            (folder / f".{_part_name(0, 1)}.abcd1234.tmp").write_bytes(b"half a file")
            (folder / "part-x.parquet.tmp").write_bytes(b"half a file")
    _write_trials(spec, trials, out)
    if spec.sweep_json:
        sweep = {
            "name": spec.name,
            "n_trials": len(trials) + spec.n_planned_extra,
            "started_at": "2025-01-01T00:00:00+00:00",
            "finished_at": "2025-01-01T01:00:00+00:00" if spec.finished else None,
            "grid": {
                "optimizer": list(dict.fromkeys(written_optimizer(o) for o in spec.optimizers)),
                "qk_norm": list(spec.qk_norms),
                "width": list(spec.widths),
                "lr": list(spec.lrs),
                "seed": list(spec.seeds),
            },
            "train": {"depth": spec.depth, "d_head": spec.d_head, "steps": spec.steps, "eval_every": spec.eval_every},
            "synthetic": {k: v for k, v in asdict(spec).items() if k not in ("effects", "diverge_if")},
        }
        (out / SWEEP_JSON).write_text(json.dumps(sweep, indent=2, default=str))
    return manifest


def _write_trials(spec: SyntheticSpec, trials: list[_Trial], out: Path) -> None:
    rows = []
    for tr in trials:
        k = tr.key
        done = tr.status == "completed"
        final = spec.final_loss(k) + tr.loss_off
        rows.append(
            dict(
                trial_id=tr.trial_id,
                optimizer=written_optimizer(k.optimizer),
                qk_norm=k.qk_norm,
                width=k.width,
                depth=spec.depth,
                n_heads=k.width // spec.d_head,
                d_head=spec.d_head,
                lr=k.lr,
                seed=k.seed,
                steps_planned=spec.steps,
                steps_done=tr.last_step,
                tokens=tr.last_step * spec.tokens_per_step,
                status=tr.status,
                final_train_loss=final if done else None,
                final_val_loss=final if done else None,
                wall_s=tr.last_step * 0.08,
                corpus_hash="synthetic",
                config_json=_config_json(spec, k),
                diverged_step=tr.diverged_step,
                error="loss is not finite" if tr.status == "diverged" else None,
            )
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=TRIALS_FILE_SCHEMA), out / TRIALS_FILE)


def _config_json(spec: SyntheticSpec, k: TrialKey) -> str:
    """The trial's settings as the trainer's config_json has them: a variant's own setting only for that
    variant (qk_clip_tau, logit_softcap), muon_per_head only when on (optimizer muon)."""
    cfg = {n: v for n, v in asdict(k).items() if n != "init_std"}
    cfg["optimizer"] = written_optimizer(k.optimizer)
    if k.optimizer == MUON_PER_HEAD:
        cfg["muon_per_head"] = True
    if k.qk_norm == "qk_clip":
        cfg["qk_clip_tau"] = spec.qk_clip_tau
    if k.qk_norm == "softcap":
        cfg["logit_softcap"] = spec.logit_softcap
    if k.init_std is not None:
        cfg.update(init="normal", init_std=k.init_std)
    return json.dumps(cfg, sort_keys=True)
