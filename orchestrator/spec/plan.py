"""`--dry-run`: what a sweep (or an LR study) will cost, printed before anything starts.

Pure arithmetic on validated TrialConfigs (the per-trial figures are in costs.py, the seconds in
calibration.py): no Ray, no torch, no CUDA, nothing written, so a laptop can plan a GPU grid.

Time comes from measured throughput (the calibration table, calibration.json): each trial's
seconds on the device kind the plan is for (`--device-kind`: cpu for a CPU sweep, else the GPU of
`--gpu`, default H100), then

    wall = driver start-up + sum over widths of (the width's trial seconds / trials at once)

with trials at once = what the resources section allows on the machine or cluster assumed (CPUs:
`--num-cpus`, default this machine's; GPUs: `--num-gpus`, default 1), capped by max_concurrent.
GPU trials of all widths share the GPUs at once: their wall time is the largest of their
GPU-seconds over the GPUs, their trial seconds over the trials at once, and the longest trial (for
a grid that fills the GPUs, the sum over widths above); a trial runs at the pace measured with its
width's packing when the trials fill the GPUs, and with the trials actually there when they do not
(a small sweep, a chunk).
The plan states its assumptions, the table rows used and their provenance. `--json` prints the
same as one JSON object. `--mfu X` adds GPU-hours at an assumed MFU beside the measured ones.
"""

from __future__ import annotations

import functools
import math
import shlex
from collections import Counter
from dataclasses import dataclass

from trainer import host
from trainer.architecture import parameter_count
from trainer.config import ConfigError, TrialConfig
from trainer.schema import QK_NORM_VARIANTS

from . import calibration, speed
from .chunks import apply_chunk, partition
from .costs import (
    CUDA_CONTEXT_BYTES,
    DEFAULT_GPU,
    GPU,
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
from .optuna_storage import storage_url
from .prepare import check_results, sweep_spec
from .study_file import expand_arms, load_lr_spec
from .sweep_file import expand
from .validation import check_trial_count


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


def _hours(h: float) -> str:
    """Hours to 3 significant digits: 0.314, 0.00123, 12.3, 1.23e+03 (never a rounded-off 0.0)."""
    return "0" if h == 0 else f"{h:.3g}"


def _clock(seconds: float) -> str:
    """9:43, 1:09:21, 2d 3:04:05."""
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    text = f"{h}:{m:02d}:{s:02d}" if h or days else f"{m}:{s:02d}"
    return f"{days}d {text}" if days else text


def resolve_device(configs: list[TrialConfig], device_kind: str | None, gpu_name: str) -> tuple[str, GPU]:
    """The device kind the plan costs on ('cpu', 'h200', ...) and the GPU it packs onto."""
    on_gpu = any(uses_cuda(c) for c in configs)
    if device_kind is None:
        gpu = find_gpu(gpu_name)
        return (calibration.device_kind(gpu.name) if on_gpu else "cpu"), gpu
    kind = device_kind.strip().lower()
    if kind == "cpu":
        if on_gpu:
            raise ConfigError("--device-kind cpu: this sweep's trials run on CUDA (train.device); name a GPU")
        return "cpu", find_gpu(gpu_name)
    try:
        gpu = find_gpu(kind)
    except ConfigError:
        names = ", ".join(dict.fromkeys(["cpu", *(calibration.device_kind(g.name) for g in GPUS)]))  # a100: 2 GPUs
        raise ConfigError(f"--device-kind: {device_kind!r} is not one of {names}") from None
    if not on_gpu:
        raise ConfigError(f"--device-kind {device_kind}: this sweep's trials run on the CPU (train.device: cpu)")
    return calibration.device_kind(gpu.name), gpu


@functools.lru_cache(maxsize=4096)
def costing_key(cfg: TrialConfig) -> str:
    """What a trial's cost depends on: its config but lr and seed."""
    return cfg.model_copy(update={"lr": 1.0, "seed": 0}).model_dump_json()


def predict(
    configs: list[TrialConfig],
    resources,
    *,
    device: str,
    gpu: GPU,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    cluster: str | None = None,
    table: calibration.Table | None = None,
    driver: bool = True,
    cache: dict | None = None,
    trial_seconds: dict | None = None,
) -> dict:
    """Trial seconds, core- and GPU-hours and wall time of a sweep (see the module's docstring).
    `cache` keeps the trials' costings between calls on the same device, table and resources (the
    chunks of one sweep); `trial_seconds`, when given, is filled with the seconds of each trial by
    its config but lr and seed (`costing_key`: what the cost depends on)."""
    table = table or calibration.load_table()
    cal = calibration.Calibration(table, device, gpu.bf16_tflops if device != "cpu" else None)
    on_gpu = device != "cpu"
    cpus = num_cpus or host.cpus()
    gpus = num_gpus or 1
    cap = getattr(resources, "max_concurrent", None)
    ray = table.local_ray
    ray_trial_s = float(ray.get("trial_s", 0.0))
    driver_s = float(ray.get("driver_s", 0.0)) if driver else 0.0
    by_width: dict[int, list[TrialConfig]] = {}
    for cfg in configs:
        by_width.setdefault(cfg.width, []).append(cfg)
    notes: list[str] = []
    cache = {} if cache is None else cache  # (config but lr and seed, GPU share) -> calibration.Costing
    used: dict[str, calibration.Row] = {}
    widths, wall, core_s, gpu_s, total_s = [], driver_s, 0.0, 0.0, 0.0
    asks, slots_of = {}, {}
    for width in by_width:
        cpt, gpt = (
            resources.for_width(width)
            if hasattr(resources, "for_width")
            else (resources.cpus_per_trial, resources.gpus_per_trial)
        )
        if on_gpu:
            slots = math.floor(gpus / gpt + 1e-9) if gpt > 0 else math.floor(cpus / cpt + 1e-9)
            if num_cpus and gpt > 0:  # CPUs bound a GPU sweep only when given: the planning machine is not the GPUs'
                slots = min(slots, math.floor(cpus / cpt + 1e-9))
        else:
            slots = math.floor(cpus / cpt + 1e-9)
        asks[width], slots_of[width] = (cpt, gpt), slots
    # GPU trials of every width share the GPUs at once (Ray places any trial whose share is free). When
    # they ask for at least all the GPUs, each runs at the pace measured with its width's packing
    # (gpus_per_trial 0.125: eight trials on a GPU); when they ask for less (a small sweep, a chunk),
    # all run at once and share the GPUs among themselves: two width-256 trials alone on a GPU run at
    # two's pace, not at the pace of the eight that 0.125 would pack.
    on_gpus = {w: g for w, g in by_width.items() if on_gpu and asks[w][1] > 0}
    gpu_trials = sum(len(g) for g in on_gpus.values())
    gpu_at_once = min(cap or gpu_trials, sum(min(len(g), slots_of[w]) for w, g in on_gpus.items()))
    demand = sum(min(len(g), slots_of[w]) * asks[w][1] for w, g in on_gpus.items())
    saturated = demand >= gpus - 1e-9 and (cap is None or cap >= gpu_at_once)
    gpu_wall, gpu_longest, gpu_seconds = 0.0, 0.0, 0.0
    for width, group in sorted(by_width.items()):
        (cpt, gpt), slots = asks[width], slots_of[width]
        at_once = max(1, min(slots, cap or slots, len(group)))
        share = 1.0
        if width in on_gpus and gpt < 1:
            share = gpt if saturated else 1 / max(1.0, min(1 / gpt, gpu_at_once / gpus))
        costings = []
        for c in group:  # trials that differ only in lr and seed cost the same
            key = (costing_key(c), share)
            if key not in cache:
                cache[key] = cal.trial(c, share)
            costings.append(cache[key])
        for c in costings:
            for n in c.notes:
                if n not in notes:
                    notes.append(n)
            for r in c.rows:
                used.setdefault(r.describe(), r)
        seconds = [c.seconds + ray_trial_s for c in costings]
        if trial_seconds is not None:
            trial_seconds.update((costing_key(cfg), s) for cfg, s in zip(group, seconds, strict=True))
        if slots < 1:
            notes.append(
                f"width {width}: a trial asks for more than the {gpus if on_gpu and gpt > 0 else cpus} "
                f"{'GPU(s)' if on_gpu and gpt > 0 else 'CPU(s)'} assumed; costed one at a time"
            )
        gpu_each = 0.0 if width not in on_gpus else (gpt if gpt >= 1 else share)  # the GPU a trial takes up
        if width in on_gpus:  # its GPU-seconds spread over the GPUs (the wall is set below)
            span = sum(seconds) * gpu_each / gpus
            gpu_seconds += sum(seconds) * gpu_each
            gpu_wall += sum(seconds)
            gpu_longest = max(gpu_longest, max(seconds))
        else:
            span = sum(seconds) / at_once
            wall += span
        total_s += sum(seconds)
        core_s += sum(seconds) * cpt
        gpu_s += sum(seconds) * gpu_each
        widths.append(
            dict(
                width=width,
                trials=len(group),
                cpus_per_trial=cpt,
                gpus_per_trial=gpt if on_gpu else 0.0,
                concurrent=at_once,
                step_s=sum(c.step_s for c in costings) / len(group),
                trial_s=sum(seconds) / len(group),
                startup_s=sum(c.parts["startup"] for c in costings) / len(group),
                evals_s=sum(c.parts["evals"] for c in costings) / len(group),
                checkpoints_s=sum(c.parts["checkpoints"] for c in costings) / len(group),
                trial_s_total=sum(seconds),
                span_s=span,
                cpu_core_hours=sum(seconds) * cpt / 3600,
                gpu_hours=sum(seconds) * gpu_each / 3600,
            )
        )
    if on_gpus:  # the binding one of: GPU-seconds over the GPUs, trials at once, the longest trial
        wall += max(gpu_seconds / gpus, gpu_wall / max(gpu_at_once, 1), gpu_longest)
    if on_gpu:
        where = f"{gpus} {gpu.name} GPU(s)" + (" (--num-gpus)" if num_gpus else " (assumed; --num-gpus N for more)")
        how = "resources.gpus_per_trial" + (", per_width" if getattr(resources, "per_width", None) else "")
        assumption = f"{where}; trials at once per width = GPUs / {how}" + (
            f", and at most {cpus} CPUs (--num-cpus) / resources.cpus_per_trial" if num_cpus else ""
        )
    else:
        if num_cpus:
            where = f"{cpus} CPUs (--num-cpus)"
        elif cluster:
            where = f"{cpus} CPUs (this machine's; a dry run cannot see the cluster at {cluster}: --num-cpus N)"
        else:
            where = f"{cpus} CPUs (this machine's, as the private local Ray takes them; --num-cpus N to change)"
        how = "resources.cpus_per_trial" + (", per_width" if getattr(resources, "per_width", None) else "")
        assumption = f"{where}; trials at once per width = CPUs / {how}"
    if cap:
        assumption += f", at most {cap} (resources.max_concurrent)"
    concurrency = max(w["concurrent"] for w in widths)
    return dict(
        device=device,
        gpu=gpu.name if on_gpu else None,
        concurrency=concurrency,
        concurrency_assumption=assumption,
        cpus=cpus,
        gpus=gpus if on_gpu else 0,
        trial_s_total=total_s,
        cpu_core_hours=core_s / 3600,
        gpu_hours=gpu_s / 3600,
        wall_s=wall,
        driver_s=driver_s,
        ray_trial_s=ray_trial_s,
        per_width=widths,
        calibration=dict(
            table=table.path,
            scaled_from=cal.scaled_from,
            rows=[dict(row=name, source=r.source) for name, r in used.items()],
            local_ray=ray,
        ),
        notes=notes,
    )


def render(
    title: str,
    configs: list[TrialConfig],
    resources,
    *,
    keep: str = "none",
    results: str = "",
    gpu_name: str = DEFAULT_GPU,
    mfu: float | None = None,
    concurrent: int | None = None,
    notes: list[str] | None = None,
    timing: dict | None = None,
) -> str:
    """The plan as text. `concurrent` bounds the trials running at once (for peak checkpoint space);
    `timing` is predict()'s answer (computed here for this machine when not given)."""
    gpu = find_gpu(gpu_name)
    if mfu is not None:
        check_mfu(mfu)
    rows = width_rows(configs, resources)
    n = len(configs)
    total_flops = sum(trial_flops(c) for c in configs)
    total_tokens = sum(trial_tokens(c) for c in configs)
    on_gpu = any(uses_cuda(c) for c in configs)
    if timing is None:
        device, gpu = resolve_device(configs, None, gpu_name)
        timing = predict(configs, resources, device=device, gpu=gpu)
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

    # ---- time, from the calibration table
    t = timing
    where = f"{t['device']}" + (f" ({t['gpu']})" if t["gpu"] else "")
    out += [
        "",
        f"time on {where}, from measured throughput (calibration table {t['calibration']['table']}"
        + (f"; {t['calibration']['scaled_from']}" if t["calibration"]["scaled_from"] else "")
        + "):",
        f"  {'width':>6} {'trials':>6} {'step ms':>9} {'s/trial':>9} {'at once':>7} {'span':>9} "
        + ("GPU-hours" if t["gpu"] else "core-hours"),
    ]
    for w in t["per_width"]:
        out.append(
            f"  {w['width']:>6} {w['trials']:>6} {w['step_s'] * 1e3:>9.3g} {w['trial_s']:>9.3g} {w['concurrent']:>7} "
            f"{_clock(w['span_s']):>9} {_hours(w['gpu_hours'] if t['gpu'] else w['cpu_core_hours'])}"
        )
    out.append(
        f"  (s/trial = start-up + steps + probes + checkpoints + {t['ray_trial_s']:g} s of Ray per trial; "
        + (
            "span = the width's GPU-seconds / GPUs; the widths share the GPUs)"
            if t["gpu"]
            else "span = the width's trial seconds / trials at once)"
        )
    )
    out.append(f"  concurrency: {t['concurrency_assumption']}")
    hours = f"{_hours(t['gpu_hours'])} GPU-hours" if t["gpu"] else f"{_hours(t['cpu_core_hours'])} CPU core-hours"
    out.append(
        f"  predicted: {hours}, wall time {_clock(t['wall_s'])} ({t['wall_s']:.0f} s: "
        f"{t['trial_s_total']:.0f} trial-seconds over up to {t['concurrency']} at once, "
        f"+ {t['driver_s']:g} s driver start-up)"
    )
    sources = sorted({r["source"].split(":")[0] for r in t["calibration"]["rows"]})
    for src in sources:
        out.append(f"  rows from: {src}")
    if t["calibration"].get("speed"):
        out.append(f"  this machine: {t['calibration']['speed']['why']}")

    warnings = list(t["notes"])
    if on_gpu:
        out += [
            "",
            "GPU-hours by GPU type, from the same rows (a GPU without rows: the measured GPU's scaled by "
            "bf16 peak)"
            + (f"; at MFU {mfu:g} (--mfu, assumed) beside them" if mfu is not None else "")
            + "; fit = trials of the largest width per GPU by memory",
            f"  {'gpu':<11} {'memory':>7} {'bf16':>11} {'GPU-hours':>10} {'fit':>4}"
            + (f" {'at MFU':>10}" if mfu is not None else ""),
        ]
        largest = max(rows, key=lambda r: r.memory.total)
        for g in GPUS:
            other = predict(
                configs, resources, device=calibration.device_kind(g.name), gpu=g, num_gpus=t["gpus"], driver=False
            )
            mark = " <- --gpu" if g is gpu else ""
            at_mfu = f" {total_flops / (g.bf16_tflops * 1e12 * mfu) / 3600:>10.3g}" if mfu is not None else ""
            out.append(
                f"  {g.name:<11} {g.memory_gb:>5g}GB {g.bf16_tflops:>6g} TF/s {_hours(other['gpu_hours']):>10} "
                f"{fit_per_gpu(largest.memory.total, g):>4}{at_mfu}{mark}"
            )
        out += [
            "",
            f"packing on {gpu.name} (resources.gpus_per_trial{', per_width' if getattr(resources, 'per_width', None) else ''}):",
        ]
        hours_by_width = {w["width"]: w["gpu_hours"] for w in t["per_width"]}
        for r in rows:
            fit = fit_per_gpu(r.memory.total, gpu)
            if r.gpus_per_trial <= 0:
                out.append(f"  width {r.width}: gpus_per_trial 0 (no GPU asked for)")
                warnings.append(f"width {r.width} runs on CUDA but asks for gpus_per_trial 0")
                continue
            asked = 1 / r.gpus_per_trial  # trials per GPU as requested (below 1: a trial takes several GPUs)
            out.append(
                f"  width {r.width}: {r.trials} trials, {asked:g} per GPU as asked, {fit} fit by memory; "
                f"{_hours(hours_by_width[r.width])} GPU-hours"
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

    storage = storage_plan(configs, keep, concurrent)
    ckpt, running = storage["checkpoint_max"], storage["running"]
    out += [
        "",
        f"results storage{(' at ' + results) if results else ''}:",
        f"  metrics  {_bytes(storage['metrics']):>10}   spectra {_bytes(storage['spectra']):>10}   "
        f"Tune state {_bytes(storage['tune']):>10}",
        f"  checkpoints: up to {_bytes(ckpt)} each (weights + optimizer state); while a trial runs, its "
        f"2 latest ({_bytes(2 * ckpt)}"
        + (f", {_bytes(2 * running * ckpt)} for {running} at once" if running else " per running trial")
        + f"); after the sweep {_bytes(storage['checkpoints_kept'])} (checkpoints.keep: {keep})",
        f"  final weights: {_bytes(storage['final_weights'])} (train.save_final: "
        f"{'on' if storage['final_weights'] else 'off'})",
        f"  total after the sweep: {_bytes(storage['total'])}",
    ]
    for note in (notes or []) + warnings:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


def storage_plan(configs: list[TrialConfig], keep: str, concurrent: int | None) -> dict:
    """Bytes of the results a sweep leaves (see costs.storage_bytes)."""
    n = len(configs)
    metrics = sum(storage_bytes(c)[0] for c in configs)
    spectra = sum(storage_bytes(c)[1] for c in configs)
    ckpt = [memory(c).checkpoint for c in configs]
    kept = 0.0 if keep == "none" else sum(ckpt)
    final = sum(4 * parameter_count(c.architecture()) for c in configs if c.save_final)
    tune = n * TUNE_BYTES_PER_TRIAL
    return dict(
        metrics=metrics,
        spectra=spectra,
        tune=tune,
        checkpoint_max=max(ckpt),
        running=min(concurrent, n) if concurrent else None,
        checkpoints_kept=kept,
        final_weights=final,
        total=metrics + spectra + kept + final + tune,
    )


@dataclass(frozen=True)
class Expected:
    """What the plan expects of a running sweep's or LR study's trials: the prior of its ETA
    (orchestrator.tune.progress). `seconds`: a trial's, by its config but lr and seed
    (`costing_key`: an LR study's searcher picks the LRs as it goes); `mean`: the planned trials'
    average (a trial the plan has no row for, one a searcher has yet to propose); `parallel`:
    trial-seconds per second of wall time (the plan's trials at once, as its wall time implies)."""

    seconds: dict[str, float]
    mean: float
    parallel: float

    def of(self, cfg: TrialConfig) -> float:
        return self.seconds.get(costing_key(cfg), self.mean)


def expected_trials(
    configs: list[TrialConfig], resources, *, num_cpus: int | None, num_gpus: int | None, gpu_name: str = DEFAULT_GPU
) -> Expected | None:
    """The `--dry-run` plan of `configs` on the resources a running sweep has (its Ray's CPUs and
    GPUs), without the driver's start-up (the ETA's clock starts at the first trial). None when the
    calibration cannot cost them (a table with no rows for their device): the ETA then goes by FLOPs
    alone."""
    try:
        device, gpu = resolve_device(configs, None, gpu_name)
        seconds: dict[str, float] = {}
        timing = predict(
            configs,
            resources,
            device=device,
            gpu=gpu,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            driver=False,
            trial_seconds=seconds,
        )
    except (ConfigError, ValueError, KeyError, OSError, ArithmeticError):  # a prior only: never stops a run
        return None
    if not seconds or timing["wall_s"] <= 0:
        return None
    return Expected(seconds, timing["trial_s_total"] / len(configs), timing["trial_s_total"] / timing["wall_s"])


def plan_dict(title: str, configs: list[TrialConfig], resources, timing: dict, *, keep: str, notes: list[str]) -> dict:
    """The plan as one JSON-able object (`--dry-run --json`)."""
    rows = {r.width: r for r in width_rows(configs, resources)}
    per_width = []
    for w in timing["per_width"]:
        r = rows[w["width"]]
        per_width.append(
            {
                **w,
                "params": r.params,
                "tokens_per_trial": r.tokens,
                "flops_per_trial": r.flops,
                "memory_bytes": r.memory.total,
            }
        )
    return dict(
        plan=title,
        trials=len(configs),
        tokens=sum(trial_tokens(c) for c in configs),
        flops=sum(trial_flops(c) for c in configs),
        gpu_hours=timing["gpu_hours"],
        cpu_core_hours=timing["cpu_core_hours"],
        wall_s=timing["wall_s"],
        trial_s_total=timing["trial_s_total"],
        driver_s=timing["driver_s"],
        device=timing["device"],
        gpu=timing["gpu"],
        concurrency=timing["concurrency"],
        concurrency_assumption=timing["concurrency_assumption"],
        cpus=timing["cpus"],
        gpus=timing["gpus"],
        calibration=timing["calibration"],
        per_width=per_width,
        storage_bytes=storage_plan(configs, keep, None)["total"],
        notes=list(notes) + list(timing["notes"]),
    )


# ---- the commands' --dry-run -----------------------------------------------------------------
def machine_table(options, device: str, cluster: str | None) -> tuple[calibration.Table, dict | None]:
    """The calibration table (--calibration, else the package's) to plan with, and how this machine's
    speed entered it: for CPU trials on this machine (no cluster: its workers are other machines),
    the cpu rows scaled by how fast this machine runs the trainer now against when they were
    measured (orchestrator.spec.speed, about 3 s with torch's import), else as they are (None)."""
    table = calibration.load_table(getattr(options, "calibration", None))
    if device != "cpu" or cluster:
        return table, None
    factor, why = speed.scale_now(table.cpu_reference)
    return table.scaled("cpu", factor), {"scale": factor, "why": why}


def _results_note(location: str) -> list[str]:
    if "://" in location and not location.startswith("file://"):
        return []
    return [
        f"results {location!r} is a local path: fine on one machine; on a multi-node cluster the sweep "
        "refuses it unless every node sees the same folder (give --results s3://bucket/prefix)"
    ]


def _render_spec(title: str, configs, spec, results, options, notes: list[str], extra: dict | None = None) -> str:
    """The plan of a sweep or LR-study file: its resources, checkpoint policy and the --gpu, --mfu,
    --device-kind, --num-cpus, --num-gpus and --calibration options; text, or JSON with --json
    (`extra`: more keys of the JSON object)."""
    import json

    device, gpu = resolve_device(configs, getattr(options, "device_kind", None), options.gpu)
    cluster = options.address if options.address and not options.local else None
    table, pace = machine_table(options, device, cluster)
    timing = predict(
        configs,
        spec.resources,
        device=device,
        gpu=gpu,
        num_cpus=options.num_cpus,
        num_gpus=getattr(options, "num_gpus", None),
        cluster=cluster,
        table=table,
    )
    timing["calibration"]["speed"] = pace
    if options.mfu is not None:
        check_mfu(options.mfu)
    if getattr(options, "json", False):
        plan = plan_dict(title, configs, spec.resources, timing, keep=spec.checkpoints.keep, notes=notes)
        return json.dumps({**plan, **(extra or {})}, indent=1) + "\n"
    return render(
        title,
        configs,
        spec.resources,
        keep=spec.checkpoints.keep,
        results=results.uri,
        gpu_name=gpu.name,
        mfu=options.mfu,
        concurrent=spec.resources.max_concurrent,
        notes=notes,
        timing=timing,
    )


def check_sweep(options) -> tuple:
    """The checks of `orchestrator.sweep` that need neither Ray nor torch, in order: the spec and its
    overrides, every grid point, the chunk, the results folder (ConfigError). Returns (spec, where
    it came from, the chunk's configs, the chunk's sweep.json entry or None, the results folder).
    The command makes them before it loads the Tune layer (Ray, Tune and torch: about 2 s of
    imports), so that a mistyped sweep is answered at once; orchestrator.tune.sweep_run.prepare
    starts with them (made twice, then: milliseconds, 768 grid points in 22 ms)."""
    spec, source = sweep_spec(options.config, options.overrides, options.spec)
    spec, configs, chunk = apply_chunk(spec, expand(spec), options.chunk)
    return spec, source, configs, chunk, check_results(results_location(options, spec), spec.name)


def check_study(options) -> tuple:
    """`check_sweep` for `orchestrator.lr_study`: the spec, its arms, the trials per arm, the results
    folder and the Optuna storage (`--dry-run` makes the same checks); returns (spec, where it came
    from, arms, the results folder), what orchestrator.tune.study_run.prepare starts with."""
    spec, source = load_lr_spec(options.config, list(options.overrides))
    arms = expand_arms(spec)
    per_arm = options.trials or spec.search.trials_per_arm
    how = "--trials" if options.trials else "search.trials_per_arm"
    check_trial_count(len(arms) * per_arm, f"LR study: {len(arms)} arms x {per_arm:,} ({how})")
    results = check_results(results_location(options, spec), spec.name)
    storage_url(spec, results)  # refused here, so that a dry run refuses what a run would
    return spec, source, arms, results


def results_location(options, spec) -> str:
    """--results, else the file's `results:`. An empty --results is refused by check_results, not
    replaced by the file's: an unset shell variable ($OUT) must not send a run to the default place."""
    return options.results if options.results is not None else spec.results


def plan_sweep(options) -> str:
    """`orchestrator.sweep --dry-run`: the sweep validated and its plan as text or JSON (ConfigError on
    bad input); with --chunk I/N the plan of that chunk, with --chunks-for MINUTES the chunk count."""
    spec, path = sweep_spec(options.config, options.overrides, options.spec)
    configs = expand(spec)
    if getattr(options, "chunks_for", None) is not None:
        return plan_chunks(spec, path, configs, options, options.chunks_for)
    n_grid = len(configs)
    spec, configs, chunk = apply_chunk(spec, configs, getattr(options, "chunk", None))
    location = results_location(options, spec)
    results = check_results(location, spec.name)
    notes, title = _results_note(location), f"sweep {spec.name} from {path}"
    if chunk:
        title += f" (chunk {chunk['index']} of {chunk['count']}: {len(configs)} of {n_grid} trials)"
        notes.append(
            f"chunk {chunk['index']} of {chunk['count']} of sweep {chunk['study']}: its own results folder "
            f"{results.uri}; the wall time above is this chunk's (--chunks-for MINUTES sizes every chunk)"
        )
    return _render_spec(title, configs, spec, results, options, notes, {"chunk": chunk} if chunk else None)


def chunk_walls(spec, configs: list[TrialConfig], count: int, options, cache: dict | None = None) -> list[dict]:
    """Each of `count` chunks (orchestrator.spec.chunks): its trials and predicted wall time and GPU- or
    core-hours, on the device and machine the options assume (as --dry-run)."""
    device, gpu = resolve_device(configs, getattr(options, "device_kind", None), options.gpu)
    cluster = options.address if options.address and not options.local else None
    table = machine_table(options, device, cluster)[0]
    cache = {} if cache is None else cache
    out = []
    for i, part in enumerate(partition(configs, count), 1):
        t = predict(
            part,
            spec.resources,
            device=device,
            gpu=gpu,
            num_cpus=options.num_cpus,
            num_gpus=getattr(options, "num_gpus", None),
            table=table,
            cache=cache,
        )
        out.append(
            dict(
                chunk=f"{i}/{count}",
                trials=len(part),
                widths=dict(sorted(Counter(c.width for c in part).items())),
                arms=len({(c.optimizer, c.qk_norm, c.width) for c in part}),
                wall_s=t["wall_s"],
                hours=t["gpu_hours"] if t["gpu"] else t["cpu_core_hours"],
                device=t["device"],
                gpu=t["gpu"],
                gpus=t["gpus"],
            )
        )
    return out


def plan_chunks(spec, path, configs: list[TrialConfig], options, minutes: float) -> str:
    """`--dry-run --chunks-for MINUTES`: the fewest chunks whose every predicted wall time is at most
    MINUTES, and each chunk's figures (text, or JSON with --json)."""
    import json

    if not (minutes > 0) or math.isinf(minutes):
        raise ConfigError(f"--chunks-for: minutes must be > 0, got {minutes!r}")
    target, cache = minutes * 60, {}
    whole = chunk_walls(spec, configs, 1, options, cache)[0]
    driver = calibration.load_table(getattr(options, "calibration", None)).local_ray.get("driver_s", 0.0)
    first = max(1, math.ceil((whole["wall_s"] - driver) / max(target - driver, 1e-9)))

    def fits(count: int) -> list[dict] | None:
        walls = chunk_walls(spec, configs, count, options, cache)
        return walls if max(w["wall_s"] for w in walls) <= target else None

    chunks, count = None, min(first, len(configs))
    while count <= len(configs) and chunks is None:  # up from the estimate to the first N that fits
        chunks, count = fits(count), count + 1
    while chunks is not None and len(chunks) > 1:  # and down, should fewer fit too
        fewer = fits(len(chunks) - 1)
        if fewer is None:
            break
        chunks = fewer
    if chunks is None:
        walls = chunk_walls(spec, configs, len(configs), options, cache)
        raise ConfigError(
            f"--chunks-for {minutes:g}: even one trial per chunk is predicted to take longer "
            f"({_clock(max(w['wall_s'] for w in walls))}); give more minutes"
        )
    count = len(chunks)
    words = ["--config", options.config or "default"] + [w for o in options.overrides for w in ("--set", o)]
    command = f"python -m orchestrator.sweep {shlex.join(words)} --chunk I/{count}"
    if getattr(options, "json", False):
        return (
            json.dumps(
                dict(
                    sweep=spec.name,
                    trials=len(configs),
                    minutes=minutes,
                    chunks=count,
                    per_chunk=chunks,
                    wall_s_total=sum(c["wall_s"] for c in chunks),
                    hours_total=sum(c["hours"] for c in chunks),
                    unit="gpu_hours" if chunks[0]["gpu"] else "cpu_core_hours",
                    whole_sweep_wall_s=whole["wall_s"],
                    command=command,
                ),
                indent=1,
            )
            + "\n"
        )
    where = f"{chunks[0]['gpus']} {chunks[0]['gpu']} GPU(s)" if chunks[0]["gpu"] else f"{chunks[0]['device']}"
    unit = "GPU-hours" if chunks[0]["gpu"] else "core-hours"
    walls = [c["wall_s"] for c in chunks]
    out = [
        f"chunks of sweep {spec.name} from {path} (dry run: nothing started, nothing written)",
        f"  {len(configs)} trials in {count} chunks of at most {_clock(target)} each on {where}, "
        "predicted from measured throughput as --dry-run does:",
        f"  {'chunk':>7} {'trials':>6} {'arms':>4} {'wall':>8} {unit:>10}  trials by width",
    ]
    for c in chunks:
        widths = " ".join(f"{w}:{n}" for w, n in c["widths"].items())
        out.append(
            f"  {c['chunk']:>7} {c['trials']:>6} {c['arms']:>4} {_clock(c['wall_s']):>8} {_hours(c['hours']):>10}  {widths}"
        )
    out += [
        f"  heaviest {_clock(max(walls))}, lightest {_clock(min(walls))}; all chunks {_clock(sum(walls))} "
        f"and {_hours(sum(c['hours'] for c in chunks))} {unit} (the whole sweep at once: {_clock(whole['wall_s'])})",
        f"run chunk I (1..{count}): {command}   -> <results>/{spec.name}-chunkIof{count}",
    ]
    return "\n".join(out) + "\n"


def plan_study(options) -> str:
    """`orchestrator.lr_study --dry-run`: every arm's trials at full length (ASHA stops some early,
    so this is an upper bound)."""
    spec, path, arms, results = check_study(options)
    per_arm = options.trials or spec.search.trials_per_arm
    configs = [cfg for cfg in arms.values() for _ in range(per_arm)]
    location = results_location(options, spec)
    notes = [
        f"LR study: {per_arm} trials per arm at full length; ASHA stops some early, so FLOPs, "
        "hours and wall time are an upper bound"
    ] + _results_note(location)
    return _render_spec(f"LR study {spec.name} from {path}", configs, spec, results, options, notes)
