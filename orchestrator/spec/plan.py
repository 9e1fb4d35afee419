"""`--dry-run`: what a sweep (or an LR study) will cost, printed before anything starts.

Pure arithmetic on validated TrialConfigs (the per-trial figures are in costs.py): no Ray, no
torch, no CUDA, nothing written, so a laptop can plan a GPU grid.

GPU time is total FLOPs / (peak bf16 FLOP/s x MFU), with MFU assumed (`--mfu`, default 0.3):
measured MFU is far lower at small widths (docs/performance.md).
"""

from __future__ import annotations

import math
from collections import Counter

from trainer.architecture import parameter_count
from trainer.config import ConfigError, TrialConfig
from trainer.schema import QK_NORM_VARIANTS

from .costs import (
    CUDA_CONTEXT_BYTES,
    DEFAULT_GPU,
    DEFAULT_MFU,
    GPUS,
    TUNE_BYTES_PER_TRIAL,
    find_gpu,
    fit_per_gpu,
    memory,
    storage_bytes,
    trial_flops,
    trial_tokens,
    uses_cuda,
    width_rows,
)
from .prepare import check_results, sweep_spec
from .study_file import expand_arms, load_lr_spec
from .sweep_file import expand


def check_mfu(mfu: float) -> float:
    if not (0 < mfu <= 1) or math.isnan(mfu):
        raise ConfigError(f"--mfu: must be in (0, 1], got {mfu!r}")
    return mfu


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
        norms = sorted({a[1] for a in arms}, key=QK_NORM_VARIANTS.index)
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
    final = sum(4 * parameter_count(c.architecture()) for c in configs if c.save_final)
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


# ---- the commands' --dry-run -----------------------------------------------------------------
def _results_note(location: str) -> list[str]:
    if "://" in location and not location.startswith("file://"):
        return []
    return [
        f"results {location!r} is a local path: fine on one machine; on a multi-node cluster the sweep "
        "refuses it unless every node sees the same folder (give --results s3://bucket/prefix)"
    ]


def _render_spec(title: str, configs, spec, results, options, notes: list[str]) -> str:
    """The plan of a sweep or LR-study file: its resources, checkpoint policy and the --gpu/--mfu options."""
    return render(
        title,
        configs,
        spec.resources,
        keep=spec.checkpoints.keep,
        results=results.uri,
        gpu_name=options.gpu,
        mfu=options.mfu,
        concurrent=spec.resources.max_concurrent,
        notes=notes,
    )


def plan_sweep(options) -> str:
    """`orchestrator.sweep --dry-run`: the sweep validated and its plan as text (ConfigError on bad input)."""
    spec, path = sweep_spec(options.config, options.overrides, options.spec)
    configs = expand(spec)
    location = options.results or spec.results
    results = check_results(location, spec.name)
    return _render_spec(f"sweep {spec.name} from {path}", configs, spec, results, options, _results_note(location))


def plan_study(options) -> str:
    """`orchestrator.lr_study --dry-run`: every arm's trials at full length (ASHA stops some early,
    so this is an upper bound)."""
    spec, path = load_lr_spec(options.config)
    arms = expand_arms(spec)
    per_arm = options.trials or spec.search.trials_per_arm
    configs = [cfg for cfg in arms.values() for _ in range(per_arm)]
    location = options.results or spec.results
    results = check_results(location, spec.name)
    notes = [
        f"LR study: {per_arm} trials per arm at full length; ASHA stops some early, so FLOPs and "
        "GPU-hours are an upper bound"
    ] + _results_note(location)
    return _render_spec(f"LR study {spec.name} from {path}", configs, spec, results, options, notes)
