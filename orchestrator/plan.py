"""`--dry-run`: what a sweep (or an LR study) will cost, printed before anything starts.

Pure arithmetic on validated TrialConfigs: no Ray, no torch, no CUDA, nothing written, so a laptop
can plan a GPU grid. Per trial it counts

- parameters, exactly as trainer.model builds them (embedding, head, q/k/v/o, MLP, norm gains and
  the QK-Norm gains of the variant);
- tokens (steps x batch_size x seq_len) and FLOPs: 6 N + 12 L T d per trained token (N the
  parameters that take part in matrix products, L depth, T seq_len, d width: the PaLM convention
  that MFU is quoted in), plus the forward passes of the probe and val batches at every eval;
- memory on the device: fp32 weights and gradients, optimizer state (AdamW 8 B per parameter; Muon
  4 B per hidden-matrix parameter, AdamW on the rest), activations kept for backward at the batch
  size (bf16 under autocast, fp32 otherwise; SDPA keeps no T x T scores), the logits and their
  gradient, and the CUDA context;
- results storage: metrics and spectra Parquet (row and part sizes measured on sweeps/smoke.yaml),
  Tune checkpoints (weights + optimizer state; the two latest per running trial, and after the
  trial what `checkpoints.keep` leaves), and final weights when `train.save_final` is on.

GPU time is total FLOPs / (peak bf16 FLOP/s x MFU). MFU is assumed (`--mfu`, default 0.3): no
figure has been measured for these models yet, and small widths run well below it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from trainer.cadence import eval_steps
from trainer.config import ConfigError, TrialConfig

DEFAULT_MFU = 0.3  # assumed, not measured (see the module docstring)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float  # as sold (GB = 1e9 bytes)
    bf16_tflops: float  # dense peak, no sparsity


GPUS = (
    GPU("H100-80GB", 80, 989),
    GPU("H200-141GB", 141, 989),
    GPU("A100-80GB", 80, 312),
    GPU("A100-40GB", 40, 312),
    GPU("A10G-24GB", 24, 125),
    GPU("L4-24GB", 24, 121),
    GPU("L40S-48GB", 48, 362),
)
DEFAULT_GPU = "H100-80GB"
CUDA_CONTEXT_BYTES = 0.6e9  # per trial process: CUDA context, cuBLAS workspaces, allocator slack
USABLE_MEMORY = 0.92  # share of a GPU's memory trials may plan on (fragmentation, other processes)

# Results storage, measured on sweeps/smoke.yaml (zstd Parquet): a part file costs about 2.5 kB of
# footer and page headers, a metrics row about 8 bytes, a spectra row 8 bytes plus its float32 sigmas.
PART_BYTES, METRIC_ROW_BYTES, SPECTRUM_ROW_OVERHEAD = 2500, 8, 8
PER_EVAL_HEAD_METRICS = 26  # per (eval, layer, head): 4 spectrum stats x 4 tensors + 10 q/k/attention metrics
STEP_METRICS = 5  # train_loss, lr, grad_norm, tokens, wall_s
TUNE_BYTES_PER_TRIAL = 60e3  # Tune's result.json, progress.csv, params and event files


def find_gpu(name: str) -> GPU:
    """A GPU of the table by name: 'H100', 'h100-80gb', 'A100-40GB', 'l40s' (case and '-'/' ' ignored)."""
    key = name.upper().replace(" ", "").replace("-", "").replace("_", "")
    exact = [g for g in GPUS if g.name.replace("-", "") == key]
    loose = [g for g in GPUS if g.name.replace("-", "").startswith(key)]
    found = exact or loose
    if len(found) != 1:
        names = ", ".join(g.name for g in GPUS)
        why = "is ambiguous" if found else "is not in the table"
        raise ConfigError(f"--gpu: {name!r} {why}; choose one of {names}")
    return found[0]


def check_mfu(mfu: float) -> float:
    if not (0 < mfu <= 1) or math.isnan(mfu):
        raise ConfigError(f"--mfu: must be in (0, 1], got {mfu!r}")
    return mfu


# ---- one trial -------------------------------------------------------------------------------
def qk_norm_params(cfg: TrialConfig) -> int:
    """QK-Norm parameters of one block: a gain (and for layer a bias) over d_head, for q and for k."""
    return {"none": 0, "rms_frozen": 0, "rms": 2 * cfg.d_head, "layer": 4 * cfg.d_head}[cfg.qk_norm]


def hidden_params(cfg: TrialConfig) -> int:
    """The 2-D hidden matrices: q, k, v, o and the MLP (Muon's parameters)."""
    return cfg.depth * (4 + 2 * cfg.mlp_ratio) * cfg.width**2


def parameter_count(cfg: TrialConfig) -> int:
    """Every parameter of trainer.model.GPT: embedding, head, hidden matrices, norm gains."""
    w = cfg.width
    norms = cfg.depth * (2 * w + qk_norm_params(cfg)) + w  # norm1, norm2, QK-Norm per block; final norm
    return 2 * cfg.vocab_size * w + hidden_params(cfg) + norms


def flops_per_token(cfg: TrialConfig, training: bool = True) -> float:
    """6 N + 12 L T d (training) or 2 N + 4 L T d (a forward pass), N = hidden matrices + head."""
    n = hidden_params(cfg) + cfg.vocab_size * cfg.width
    attention = 2 * cfg.depth * cfg.seq_len * cfg.width  # QK^T and AV, per token, forward
    return 3 * (2 * n + 2 * attention) if training else 2 * n + 2 * attention


def eval_tokens(cfg: TrialConfig) -> int:
    """Tokens of the forward passes at every eval: the probe batch, plus the val batches when they differ."""
    per_eval = cfg.probe_seqs * cfg.seq_len
    if cfg.probe_seqs != cfg.eval_batches * cfg.batch_size:
        per_eval += cfg.eval_batches * cfg.batch_size * cfg.seq_len
    return len(eval_steps(cfg)) * per_eval


def trial_tokens(cfg: TrialConfig) -> int:
    return cfg.steps * cfg.batch_size * cfg.seq_len


def trial_flops(cfg: TrialConfig) -> float:
    return trial_tokens(cfg) * flops_per_token(cfg) + eval_tokens(cfg) * flops_per_token(cfg, training=False)


def uses_cuda(cfg: TrialConfig) -> bool:
    return cfg.device in ("cuda", "auto")


def activation_dtype_bytes(cfg: TrialConfig) -> int:
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and uses_cuda(cfg))
    return 2 if bf16 else 4


@dataclass(frozen=True)
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def checkpoint(self) -> float:
        """A Tune checkpoint: weights and optimizer state (fp32)."""
        return self.weights + self.optimizer


def memory(cfg: TrialConfig) -> Memory:
    n = parameter_count(cfg)
    if cfg.optimizer == "muon":
        optimizer = 4 * hidden_params(cfg) + 8 * (n - hidden_params(cfg))
    else:
        optimizer = 8 * n
    a = activation_dtype_bytes(cfg)
    tokens = cfg.batch_size * cfg.seq_len
    w, m = cfg.width, cfg.mlp_ratio
    # Per token and block: two fp32 residual-stream inputs (8w bytes) and, at dtype size, the norm
    # outputs, q, k, v, roped q and k, the attention output and the wo input (9w), up and GELU
    # outputs (2 m w), and the QK-Norm inputs when there is one (2w).
    per_block = 8 * w + a * (9 * w + 2 * m * w + (2 * w if cfg.qk_norm != "none" else 0))
    logits = tokens * cfg.vocab_size * (a + 4 + 4)  # logits, fp32 softmax for the loss, their gradient
    return Memory(
        weights=4 * n, gradients=4 * n, optimizer=optimizer, activations=tokens * cfg.depth * per_block + logits
    )


def storage_bytes(cfg: TrialConfig) -> tuple[float, float]:
    """(metrics, spectra) bytes of one trial's Parquet parts."""
    evals = len(eval_steps(cfg))
    parts = evals + (cfg.steps // cfg.checkpoint_every if cfg.checkpoint_every else 0) + 1
    heads = cfg.depth * cfg.n_heads
    metric_rows = math.ceil(cfg.steps / cfg.log_every) * STEP_METRICS + evals * (1 + heads * PER_EVAL_HEAD_METRICS)
    spectra_rows = evals * heads * 4
    return (
        parts * PART_BYTES + metric_rows * METRIC_ROW_BYTES,
        parts * PART_BYTES + spectra_rows * (SPECTRUM_ROW_OVERHEAD + 4 * cfg.d_head),
    )


def fit_per_gpu(need: float, gpu: GPU) -> int:
    """Trials of this size that fit in one GPU's memory at once."""
    return int(gpu.memory_gb * 1e9 * USABLE_MEMORY // (need + CUDA_CONTEXT_BYTES))


# ---- the plan --------------------------------------------------------------------------------
@dataclass
class WidthRow:
    width: int
    trials: int
    params: int
    tokens: int
    flops: float  # per trial
    memory: Memory  # per trial (the largest of the width: AdamW, a QK-Norm variant)
    gpus_per_trial: float
    cpus_per_trial: float


def width_rows(configs: list[TrialConfig], resources) -> list[WidthRow]:
    rows: dict[int, WidthRow] = {}
    for cfg in configs:
        mem = memory(cfg)
        row = rows.get(cfg.width)
        if row is None:
            cpus, gpus = (
                resources.for_width(cfg.width)
                if hasattr(resources, "for_width")
                else (resources.cpus_per_trial, resources.gpus_per_trial)
            )
            rows[cfg.width] = WidthRow(
                cfg.width, 1, parameter_count(cfg), trial_tokens(cfg), trial_flops(cfg), mem, gpus, cpus
            )
            continue
        row.trials += 1
        row.params = max(row.params, parameter_count(cfg))
        row.flops = max(row.flops, trial_flops(cfg))
        row.tokens = max(row.tokens, trial_tokens(cfg))
        if mem.total > row.memory.total:
            row.memory = mem
    return [rows[w] for w in sorted(rows)]


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _bytes(x: float) -> str:
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def arms_line(configs: list[TrialConfig]) -> list[str]:
    """Trials by arm (optimizer x qk_norm x width), grouped when many arms have the same count."""
    per_arm = Counter((c.optimizer, c.qk_norm, c.width) for c in configs)
    by_count: dict[int, list] = {}
    for arm, n in sorted(per_arm.items()):
        by_count.setdefault(n, []).append(arm)
    lines = [f"trials by arm (optimizer x qk_norm x width): {len(per_arm)} arms"]
    for n, arms in sorted(by_count.items(), reverse=True):
        opts = sorted({a[0] for a in arms})
        norms = sorted({a[1] for a in arms}, key=lambda v: ("none", "rms", "rms_frozen", "layer").index(v))
        widths = sorted({a[2] for a in arms})
        if len(arms) == len(opts) * len(norms) * len(widths):
            what = f"{{{', '.join(opts)}}} x {{{', '.join(norms)}}} x {{{', '.join(map(str, widths))}}}"
        else:
            what = ", ".join(f"{o}/{q}/w{w}" for o, q, w in arms)
        lines.append(f"  {len(arms)} arm(s) x {n} trials: {what}")
    return lines


def render(
    title: str,
    configs: list[TrialConfig],
    resources,
    *,
    keep: str = "none",
    results: str = "",
    gpu_name: str = DEFAULT_GPU,
    mfu: float = DEFAULT_MFU,
    concurrent: int | None = None,
    notes: list[str] | None = None,
) -> str:
    """The plan as text. `concurrent` bounds the trials running at once (for peak checkpoint space)."""
    gpu = find_gpu(gpu_name)
    check_mfu(mfu)
    rows = width_rows(configs, resources)
    n = len(configs)
    total_flops = sum(trial_flops(c) for c in configs)
    total_tokens = sum(trial_tokens(c) for c in configs)
    on_gpu = any(uses_cuda(c) for c in configs)
    out = [f"plan: {title} (dry run: nothing started, nothing written)", ""]
    out += arms_line(configs)
    out += ["", f"per trial, by width (memory: the largest arm of the width; {'bf16 autocast' if on_gpu else 'fp32'}):"]
    head = (
        f"  {'width':>6} {'trials':>6} {'params':>8} {'tokens':>8} {'FLOPs':>9} {'weights':>9} {'optim':>9} "
        f"{'activ.':>9} {'total':>9}" + (f" {'gpus':>5} {'fit/' + gpu.name.split('-')[0]:>9}" if on_gpu else "")
    )
    out.append(head)
    for r in rows:
        fit = fit_per_gpu(r.memory.total, gpu)
        out.append(
            f"  {r.width:>6} {r.trials:>6} {_si(r.params):>8} {_si(r.tokens):>8} {_si(r.flops):>9} "
            f"{_bytes(r.memory.weights):>9} {_bytes(r.memory.optimizer):>9} {_bytes(r.memory.activations):>9} "
            f"{_bytes(r.memory.total):>9}" + (f" {r.gpus_per_trial:>5g} {fit:>9}" if on_gpu else "")
        )
    out.append(
        "  (total = weights + gradients (= weights) + optimizer state + activations"
        + (
            f"; a trial process also takes ~{_bytes(CUDA_CONTEXT_BYTES)} of CUDA context)"
            if on_gpu
            else "; CPU trials: no GPU table)"
        )
    )
    out += ["", f"total: {n} trials, {_si(total_tokens)} tokens, {_si(total_flops, 'FLOP')}"]

    warnings = []
    if on_gpu:
        out += [
            "",
            f"GPU time at MFU {mfu:g} ({'--mfu' if mfu != DEFAULT_MFU else 'assumed, not measured; --mfu'} "
            "to change): GPU-hours = FLOPs / (peak bf16 x MFU); fit = trials of the largest width per GPU "
            "by memory",
            f"  {'gpu':<11} {'memory':>7} {'bf16':>11} {'GPU-hours':>10} {'fit':>4}",
        ]
        largest = max(rows, key=lambda r: r.memory.total)
        for g in GPUS:
            hours = total_flops / (g.bf16_tflops * 1e12 * mfu) / 3600
            mark = " <- --gpu" if g is gpu else ""
            out.append(
                f"  {g.name:<11} {g.memory_gb:>5g}GB {g.bf16_tflops:>6g} TF/s {hours:>10.1f} "
                f"{fit_per_gpu(largest.memory.total, g):>4}{mark}"
            )
        out += [
            "",
            f"packing on {gpu.name} (resources.gpus_per_trial{', per_width' if getattr(resources, 'per_width', None) else ''}):",
        ]
        for r in rows:
            fit = fit_per_gpu(r.memory.total, gpu)
            if r.gpus_per_trial <= 0:
                out.append(f"  width {r.width}: gpus_per_trial 0 (no GPU asked for)")
                warnings.append(f"width {r.width} runs on CUDA but asks for gpus_per_trial 0")
                continue
            asked = 1 / r.gpus_per_trial  # trials per GPU as requested (below 1: a trial takes several GPUs)
            gpu_hours = r.trials * r.flops / (gpu.bf16_tflops * 1e12 * mfu) / 3600
            out.append(
                f"  width {r.width}: {r.trials} trials, {asked:g} per GPU as asked, {fit} fit by memory; "
                f"{gpu_hours:.1f} GPU-hours"
            )
            if fit < 1:
                warnings.append(
                    f"a width-{r.width} trial needs about {_bytes(r.memory.total + CUDA_CONTEXT_BYTES)}, "
                    f"more than a {gpu.name}"
                )
            elif asked > fit:
                warnings.append(
                    f"width {r.width}: gpus_per_trial {r.gpus_per_trial:g} packs {asked:g} trials on a "
                    f"GPU but only {fit} fit in a {gpu.name}'s memory; raise gpus_per_trial "
                    "(resources.per_width)"
                )

    metrics = sum(storage_bytes(c)[0] for c in configs)
    spectra = sum(storage_bytes(c)[1] for c in configs)
    ckpt = [memory(c).checkpoint for c in configs]
    running = min(concurrent, n) if concurrent else None
    kept = 0.0 if keep == "none" else sum(ckpt)
    final = sum(4 * parameter_count(c) for c in configs if c.save_final)
    tune = n * TUNE_BYTES_PER_TRIAL
    total = metrics + spectra + kept + final + tune
    out += [
        "",
        f"results storage{(' at ' + results) if results else ''}:",
        f"  metrics  {_bytes(metrics):>10}   spectra {_bytes(spectra):>10}   Tune state {_bytes(tune):>10}",
        f"  checkpoints: up to {_bytes(max(ckpt))} each (weights + optimizer state); while a trial runs, its "
        f"2 latest ({_bytes(2 * max(ckpt))}"
        + (f", {_bytes(2 * running * max(ckpt))} for {running} at once" if running else " per running trial")
        + f"); after the sweep {_bytes(kept)} (checkpoints.keep: {keep})",
        f"  final weights: {_bytes(final)} (train.save_final: {'on' if final else 'off'})",
        f"  total after the sweep: {_bytes(total)}",
    ]
    for note in (notes or []) + warnings:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


# ---- the CLIs' --dry-run ---------------------------------------------------------------------
def add_plan_args(p) -> None:
    """--dry-run, --gpu, --mfu on an argparse parser (orchestrator.sweep, orchestrator.lr_study)."""
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the plan (trials, tokens, FLOPs, memory, GPUs, GPU-hours, storage); "
        "starts nothing, writes nothing",
    )
    p.add_argument(
        "--gpu",
        default=DEFAULT_GPU,
        metavar="NAME",
        help=f"GPU type the plan packs onto: {', '.join(g.name for g in GPUS)} (default {DEFAULT_GPU})",
    )
    p.add_argument(
        "--mfu",
        type=float,
        default=DEFAULT_MFU,
        help=f"model FLOPs utilisation assumed for GPU-hours (default {DEFAULT_MFU}, not measured)",
    )


def _results_note(results_uri: str, location: str) -> list[str]:
    if "://" in location and not location.startswith("file://"):
        return []
    return [
        f"results {location!r} is a local path: fine on one machine; on a multi-node cluster the sweep "
        "refuses it unless every node sees the same folder (give --results s3://bucket/prefix)"
    ]


def dry_run_sweep(args) -> int:
    """`orchestrator.sweep --dry-run`: validate the sweep file and print its plan; exit status."""
    from .spec import check_results, expand, load_spec
    from .tune_core import bad_input

    try:
        spec, path = load_spec(args.config, getattr(args, "overrides", None))
        configs = expand(spec)
        location = args.results or spec.results
        results = check_results(location, spec.name)
        text = render(
            f"sweep {spec.name} from {path}",
            configs,
            spec.resources,
            keep=spec.checkpoints.keep,
            results=results.uri,
            gpu_name=args.gpu,
            mfu=args.mfu,
            concurrent=spec.resources.max_concurrent,
            notes=_results_note(results.uri, location),
        )
    except ConfigError as err:
        return bad_input(err)
    print(text, end="", flush=True)
    return 0


def dry_run_study(args) -> int:
    """`orchestrator.lr_study --dry-run`: every arm's trials at full length (ASHA stops some early,
    so this is an upper bound)."""
    from .spec import check_results, expand_arms, load_lr_spec
    from .tune_core import bad_input

    try:
        spec, path = load_lr_spec(args.config)
        arms = expand_arms(spec)
        per_arm = args.trials or spec.search.trials_per_arm
        configs = [cfg for cfg in arms.values() for _ in range(per_arm)]
        location = args.results or spec.results
        results = check_results(location, spec.name)
        notes = [
            f"LR study: {per_arm} trials per arm at full length; ASHA stops some early, so FLOPs and "
            "GPU-hours are an upper bound"
        ] + _results_note(results.uri, location)
        text = render(
            f"LR study {spec.name} from {path}",
            configs,
            spec.resources,
            keep=spec.checkpoints.keep,
            results=results.uri,
            gpu_name=args.gpu,
            mfu=args.mfu,
            concurrent=spec.resources.max_concurrent,
            notes=notes,
        )
    except ConfigError as err:
        return bad_input(err)
    print(text, end="", flush=True)
    return 0
