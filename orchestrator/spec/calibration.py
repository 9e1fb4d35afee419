"""The calibration table and what a trial takes in seconds: measured throughput, not an assumed MFU.

`calibration.json` (next to this file, shipped in the package) holds rows of measured training
throughput, each for one device kind (`cpu`, `h200`, ...), width, optimizer, qk_norm variant and
shape, with its provenance (`source`: command, machine, code, date). `python -m benchmarks.trainer
--calibrate` rewrites the `cpu` rows on the machine it runs on; `python -m benchmarks.gpu
--calibrate` rewrites the rows of the GPU it runs on. No Ray, no torch here.

A trial's seconds (`trial_seconds`):

    start-up + steps x step + regular evals x eval + early probes x probe + checkpoints x checkpoint

- step: the train step of the trial's width, from the base rows of the device (AdamW, qk_norm none,
  the fewest trials sharing the device): throughput (tokens/s) interpolated across widths
  log-log against FLOPs per token (`costs.flops_per_token`), so the rows also cover other depths,
  sequence lengths and widths; below the smallest row's FLOPs per token the tokens/s of that row
  (small models are bound by overheads, not FLOPs), above the largest the FLOP/s of that row
  (large ones by FLOPs). Then the variant's ratio to the base, measured at the nearest row width:
  the optimizer x qk_norm row when the device has one, else the optimizer's ratio (muon_per_head:
  Muon's when it has none) times the qk_norm variant's (rms_frozen: rms's; layer: rms's; qk_clip:
  its extra FLOPs, one more QK^T per layer; softcap: costed as plain attention), 1 when there is
  nothing measured.
- sharing a GPU (gpus_per_trial < 1): the measured aggregate gain of k trials on one GPU (rows
  with `concurrent` k), interpolated in log k, capped at the best FLOP/s the device reached.
- eval and probe: the rows' seconds of one regular eval (probe and val loss) and one early probe,
  scaled by held-out tokens; on a device with no eval rows, a forward pass at the training rate.
- start-up: the rows' (building the trial, the first step, the end's flush and compaction); not
  measured on a GPU, so assumed there (ASSUMED_GPU_STARTUP_S) and said so.
- checkpoints: their bytes at an assumed CHECKPOINT_BYTES_PER_S.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from trainer.cadence import eval_steps, regular_steps
from trainer.config import ConfigError, TrialConfig

TABLE = Path(__file__).with_name("calibration.json")
ASSUMED_GPU_STARTUP_S = {False: 5.0, True: 25.0}  # eager / compile: CUDA start-up (+ a compile, ~20 s on a CPU)
CHECKPOINT_BYTES_PER_S = 1e9  # assumed: a local disk; an object store is slower
# How a plan names a device kind: --device-kind, or the GPU of --gpu ("H200-141GB" -> "h200").
QK_FALLBACK = {"rms_frozen": "rms", "layer": "rms"}  # variants costed as another when not measured


def device_kind(name: str) -> str:
    """'cpu', or a GPU's short name in lower case: 'H100-80GB' -> 'h100', 'a100-40gb' -> 'a100'."""
    return name.lower().split("-")[0].strip()


@dataclass(frozen=True)
class Row:
    device: str
    width: int
    optimizer: str
    qk_norm: str
    step_s: float
    source: str
    muon_per_head: bool = False
    depth: int = 2
    d_head: int = 32
    seq_len: int = 128
    batch_size: int = 16
    vocab_size: int = 256
    probe_seqs: int = 32
    threads: int | None = None
    dtype: str = "float32"
    compile: bool = False
    concurrent: int = 1  # trials measured at once (CPU: one-thread processes on the machine; GPU: sharing one GPU)
    tokens_per_s: float | None = None
    eval_s: float | None = None
    probe_s: float | None = None
    startup_s: float | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def rate(self) -> float:
        """Training tokens/s of one trial."""
        return self.tokens_per_step / self.step_s

    @property
    def eval_rate(self) -> float:
        """Held-out tokens/s of one regular eval (the probe and the val loss from one forward)."""
        return self.probe_seqs * self.seq_len / self.eval_s

    @property
    def probe_rate(self) -> float:
        """Held-out tokens/s of one early probe (the spectra alone)."""
        return self.probe_seqs * self.seq_len / self.probe_s

    @cached_property
    def flops_per_token(self) -> float:
        from .costs import flops_per_token

        return flops_per_token(self.config())

    def config(self, **kw) -> TrialConfig:
        return TrialConfig.model_construct(
            **{
                **TrialConfig.model_construct().model_dump(),
                **dict(
                    width=self.width,
                    depth=self.depth,
                    d_head=self.d_head,
                    seq_len=self.seq_len,
                    batch_size=self.batch_size,
                    vocab_size=self.vocab_size,
                    optimizer=self.optimizer,
                    qk_norm=self.qk_norm,
                ),
                **kw,
            }
        )

    def describe(self) -> str:
        what = f"{self.optimizer}{'/per-head' if self.muon_per_head else ''}/{self.qk_norm}"
        share = f", {self.concurrent} at once" if self.concurrent > 1 else ""
        return f"{self.device} w{self.width} {what}{' compiled' if self.compile else ''}{share}"


@dataclass
class Table:
    rows: list[Row]
    local_ray: dict = field(default_factory=dict)
    path: str = ""
    # the CPU seconds of orchestrator.spec.speed's reference step when the cpu rows were measured
    # ({"step_s": ..., "source": ...}); empty in a table from before it
    cpu_reference: dict = field(default_factory=dict)

    def devices(self) -> list[str]:
        return sorted({r.device for r in self.rows})

    def scaled(self, device: str, factor: float) -> Table:
        """The table with every time of `device`'s rows multiplied by `factor` (a machine that runs
        the same work `factor` times as long: orchestrator.spec.speed)."""
        if factor == 1.0:
            return self

        def times(r: Row) -> Row:
            def by(x):
                return None if x is None else x * factor

            rate = None if r.tokens_per_s is None else r.tokens_per_s / factor
            return replace(
                r,
                step_s=r.step_s * factor,
                tokens_per_s=rate,
                eval_s=by(r.eval_s),
                probe_s=by(r.probe_s),
                startup_s=by(r.startup_s),
            )

        rows = [times(r) if r.device == device else r for r in self.rows]
        return replace(self, rows=rows)

    def for_device(self, device: str) -> list[Row]:
        return [r for r in self.rows if r.device == device]


def load_table(path: str | Path | None = None) -> Table:
    """The calibration table (default: the package's calibration.json); ConfigError when unreadable."""
    p = Path(path) if path else TABLE
    try:
        data = json.loads(p.read_text())
        rows = [Row(**r) for r in data.get("rows", [])]
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"calibration table {p}: cannot be read ({err})") from None
    return Table(rows, dict(data.get("local_ray", {})), str(p), _reference(data.get("cpu_reference"), p))


def _reference(found, path: Path) -> dict:
    """The table's `cpu_reference`, checked: {} when absent, else a mapping whose `step_s` is a
    positive number of seconds (ConfigError naming the table otherwise)."""
    if found is None:
        return {}
    step = found.get("step_s") if isinstance(found, dict) else None
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
        raise ConfigError(
            f"calibration table {path}: cpu_reference.step_s must be a positive number of seconds, got {step!r}"
        )
    return dict(found)


def write_rows(rows: list[dict], device: str, path: str | Path | None = None, **top) -> Path:
    """Replace the rows of `device` in the table at `path` (default: the package's) with `rows`, and
    set the top-level keys `top` (the cpu rows' `cpu_reference`)."""
    p = Path(path) if path else TABLE
    data = json.loads(p.read_text()) if p.exists() else {"rows": []}
    data["rows"] = [r for r in data.get("rows", []) if r.get("device") != device] + rows
    data.update(top)
    text = json.dumps(data, indent=1) + "\n"
    p.write_text(text)
    return p


# ---- interpolation ----------------------------------------------------------------------------
def _interp(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear y(x) through sorted (x, y) points; clamped at both ends."""
    points = sorted(points)
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def rate_at(rows: list[Row], flops: float, attr: str = "rate") -> float:
    """Tokens/s at `flops` per token from rows of one kind: log-log between rows; below the smallest
    the smallest row's tokens/s, above the largest its FLOP/s (tokens/s falling as 1/FLOPs)."""
    pts = sorted((r.flops_per_token, getattr(r, attr)) for r in rows)
    lo, hi = pts[0], pts[-1]
    if flops >= hi[0]:
        return hi[1] * hi[0] / flops
    if flops <= lo[0]:
        return lo[1]
    return math.exp(_interp([(math.log(f), math.log(v)) for f, v in pts], math.log(flops)))


@dataclass
class Costing:
    """How one trial was costed: its seconds by part, and the rows and rules used."""

    seconds: float
    step_s: float
    parts: dict
    rows: list[Row]
    notes: list[str]


class Calibration:
    """Trial seconds on one device kind from a table (see the module's docstring)."""

    def __init__(self, table: Table, device: str, gpu_tflops: float | None = None):
        self.table, self.device = table, device
        self.rows = table.for_device(device)
        self.scaled_from: str | None = None
        if not self.rows and device != "cpu":
            # an uncalibrated GPU: the rows of a calibrated one, scaled by dense bf16 peak
            gpus = [d for d in table.devices() if d != "cpu"]
            if not gpus:
                raise ConfigError(
                    f"the calibration table {table.path} has no GPU rows; run python -m benchmarks.gpu --calibrate"
                )
            from .costs import GPUS

            peaks = {device_kind(g.name): g.bf16_tflops for g in GPUS}
            source = "h200" if "h200" in gpus else gpus[0]
            scale = (gpu_tflops or peaks.get(device, peaks.get(source, 1.0))) / peaks.get(source, 1.0)
            self.scaled_from = f"{source} x {scale:g} (bf16 peak)"
            self.rows = [_scaled(r, device, scale) for r in table.for_device(source)]
        if not self.rows:
            raise ConfigError(
                f"the calibration table {table.path} has no {device!r} rows; run "
                + (
                    "python -m benchmarks.trainer --calibrate"
                    if device == "cpu"
                    else "python -m benchmarks.gpu --calibrate"
                )
            )

    # -- the rows of one kind ---------------------------------------------------------------
    def _kind(self, optimizer: str, qk_norm: str, per_head: bool, compile_: bool | None, concurrent: int | None):
        rows = [
            r for r in self.rows if r.optimizer == optimizer and r.qk_norm == qk_norm and r.muon_per_head == per_head
        ]
        if compile_ is not None:  # compiled rows for a compiled trial when there are some, else eager ones
            rows = [r for r in rows if r.compile == compile_] or [r for r in rows if not r.compile] or rows
        if concurrent is not None:
            rows = [r for r in rows if r.concurrent == concurrent]
        return rows

    def base_rows(self, compile_: bool) -> list[Row]:
        """AdamW, qk_norm none, at the fewest trials at once the device has, compiled if asked and measured."""
        rows = self._kind("adamw", "none", False, compile_, None)
        if not rows:
            raise ConfigError(
                f"the calibration table {self.table.path} has no {self.device} row for AdamW with qk_norm none, "
                "which every plan on that device starts from; recalibrate (docs/performance.md)"
            )
        least = min(r.concurrent for r in rows)
        return [r for r in rows if r.concurrent == least]

    def _ratio(self, optimizer: str, qk_norm: str, per_head: bool, flops: float) -> tuple[float, Row | None]:
        """A variant's step time over the base's, from pairs of rows measured alike (width, compile,
        trials at once), at the row width nearest in FLOPs per token; (1, None) with none."""
        pairs = []
        for r in self._kind(optimizer, qk_norm, per_head, None, None):
            base = [
                b
                for b in self._kind("adamw", "none", False, None, r.concurrent)
                if b.width == r.width and b.compile == r.compile and b.depth == r.depth and b.seq_len == r.seq_len
            ]
            if base:
                pairs.append((abs(math.log(r.flops_per_token / flops)), r.step_s / base[0].step_s, r))
        if not pairs:
            return 1.0, None
        _, ratio, row = min(pairs, key=lambda p: p[0])
        return ratio, row

    def variant_ratio(self, cfg: TrialConfig) -> tuple[float, list[Row], list[str]]:
        """The step-time ratio of cfg's optimizer x qk_norm (x muon_per_head) to AdamW/none."""
        from .costs import flops_per_token

        flops = flops_per_token(cfg)
        per_head = cfg.optimizer == "muon" and bool(getattr(cfg, "muon_per_head", False))
        notes: list[str] = []
        if cfg.optimizer == "adamw" and cfg.qk_norm == "none":
            return 1.0, [], notes
        ratio, row = self._ratio(cfg.optimizer, cfg.qk_norm, per_head, flops)
        if row is not None:
            return ratio, [row], notes
        used: list[Row] = []
        opt_ratio, opt_row = (1.0, None)
        if cfg.optimizer == "muon":
            opt_ratio, opt_row = self._ratio("muon", "none", per_head, flops)
            if opt_row is None and per_head:
                opt_ratio, opt_row = self._ratio("muon", "none", False, flops)
                if opt_row is not None:
                    notes.append(f"muon_per_head on {self.device}: costed as Muon (not measured)")
            if opt_row is None:
                notes.append(f"Muon on {self.device}: costed as AdamW (not measured)")
            else:
                used.append(opt_row)
        qk_ratio, qk_row = (1.0, None)
        if cfg.qk_norm != "none":
            qk_ratio, qk_row = self._ratio("adamw", cfg.qk_norm, False, flops)
            if qk_row is None and cfg.qk_norm in QK_FALLBACK:
                qk_ratio, qk_row = self._ratio("adamw", QK_FALLBACK[cfg.qk_norm], False, flops)
            if qk_row is not None:
                used.append(qk_row)
            elif cfg.qk_norm == "qk_clip":
                plain = flops_per_token(cfg.model_copy(update={"qk_norm": "none"}))
                qk_ratio = flops / plain
                notes.append(f"qk_clip on {self.device}: its extra QK^T per layer costed by FLOPs (x{qk_ratio:.3f})")
            elif cfg.qk_norm == "softcap":
                notes.append(f"softcap on {self.device}: costed as plain attention (not measured; slower on a CPU)")
            else:
                notes.append(f"qk_norm {cfg.qk_norm} on {self.device}: costed as none (not measured)")
        return opt_ratio * qk_ratio, used, notes

    def sharing_gain(self, width_flops: float, k: float, compile_: bool) -> tuple[float, list[Row]]:
        """Aggregate throughput of k trials sharing one device over one trial alone (GPU rows with
        `concurrent` > 1), interpolated in log k at the nearest measured width, capped so that the
        device does not exceed the best FLOP/s it reached."""
        if k <= 1:
            return 1.0, []
        base = self.base_rows(compile_)
        shared = [r for r in self._kind("adamw", "none", False, None, None) if r.concurrent > 1]
        if not shared or self.device == "cpu":
            return 1.0, []
        width = min({r.width for r in shared}, key=lambda w: abs(math.log(_flops_of(shared, w) / width_flops)))
        alone = [b for b in self._kind("adamw", "none", False, None, 1) if b.width == width]
        if not alone:
            return 1.0, []
        points = [(0.0, 0.0)] + [
            (
                math.log(r.concurrent),
                math.log(r.concurrent * r.rate / min(alone, key=lambda b: b.compile != r.compile).rate),
            )
            for r in shared
            if r.width == width
        ]
        gain = math.exp(_interp(points, math.log(k)))
        best = max(b.rate * b.flops_per_token for b in base)
        single = rate_at(base, width_flops) * width_flops
        gain = max(1.0, min(gain, best / single))
        return gain, [r for r in shared if r.width == width]

    # -- one trial --------------------------------------------------------------------------
    def trial(self, cfg: TrialConfig, share: float = 1.0) -> Costing:
        """Seconds of one trial (`share`: the fraction of a GPU it gets; 1 on a CPU)."""
        from .costs import flops_per_token, memory

        notes: list[str] = []
        base = self.base_rows(bool(cfg.compile))
        if cfg.compile and not any(r.compile for r in base):
            notes.append(f"compile: true on {self.device}: costed as eager (no compiled rows)")
        plain = cfg.model_copy(update={"qk_norm": "none"}) if cfg.qk_norm == "qk_clip" else cfg
        flops = flops_per_token(plain)
        rate = rate_at(base, flops)
        ratio, used, more = self.variant_ratio(cfg)
        notes += more
        k = 1 / share if 0 < share < 1 else 1.0
        gain, shared = self.sharing_gain(flops, k, bool(cfg.compile))
        rate_each = rate * gain / k
        step_s = cfg.batch_size * cfg.seq_len / rate_each * ratio

        evals = eval_steps(cfg)
        regular = regular_steps(cfg)
        n_regular = sum(1 for s in evals if s in regular)
        n_early = len(evals) - n_regular
        eval_tokens = cfg.probe_seqs * cfg.seq_len
        if cfg.probe_seqs != cfg.eval_batches * cfg.batch_size:
            val_tokens = cfg.eval_batches * cfg.batch_size * cfg.seq_len
        else:
            val_tokens = 0
        eval_rows = [r for r in base if r.eval_s]
        slow = rate / rate_each  # sharing and the variant slow evals as they slow steps
        if eval_rows:
            eval_rate = rate_at(eval_rows, flops, "eval_rate")
            probe_rate = rate_at([r for r in base if r.probe_s] or eval_rows, flops, "probe_rate")
            eval_s = (eval_tokens / eval_rate + val_tokens / (3 * rate)) * slow
            probe_s = eval_tokens / probe_rate * slow
        else:  # a forward pass at the training rate (a third of a trained token's FLOPs)
            eval_s = (eval_tokens + val_tokens) / (3 * rate_each)
            probe_s = eval_tokens / (3 * rate_each)
            notes.append(f"probes on {self.device}: not measured, costed as forward passes at the training rate")

        startups = [r.startup_s for r in base if r.startup_s is not None]
        if startups:
            startup_s = _interp([(r.flops_per_token, r.startup_s) for r in base if r.startup_s is not None], flops)
        else:
            startup_s = ASSUMED_GPU_STARTUP_S[bool(cfg.compile)]
            notes.append(
                f"start-up on {self.device}: not measured, assumed {startup_s:g} s a trial"
                + (" (with its compile)" if cfg.compile else "")
            )
        every = cfg.checkpoint_every
        n_ckpt = (cfg.steps - 1) // every if every > 0 else 0  # after steps every-1, 2 every-1, ..., not the last
        ckpt_s = n_ckpt * memory(cfg).checkpoint / CHECKPOINT_BYTES_PER_S
        parts = dict(
            startup=startup_s,
            steps=cfg.steps * step_s,
            evals=n_regular * eval_s + n_early * probe_s,
            checkpoints=ckpt_s,
        )
        return Costing(sum(parts.values()), step_s, parts, base + used + shared, notes)


def _flops_of(rows: list[Row], width: int) -> float:
    return next(r.flops_per_token for r in rows if r.width == width)


def _scaled(row: Row, device: str, scale: float) -> Row:
    from dataclasses import replace

    return replace(
        row,
        device=device,
        step_s=row.step_s / scale,
        tokens_per_s=(row.tokens_per_s or row.rate) * scale,
        source=f"{row.source}; scaled x{scale:g} from {row.device} by bf16 peak (not measured on {device})",
    )
