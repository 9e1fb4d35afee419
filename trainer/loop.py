"""One training trial: schedule, clipping, probes, checkpoints, divergence, streaming metrics.

`run_trial` knows nothing of Ray. The orchestrator plugs in through `TrialHooks` (report to Tune,
attach checkpoints); the standalone CLI plugs in a printer. Order within a step S:
(eval/probe of the model after S updates) -> train step -> log scalars -> flush -> (checkpoint). Rows for S are therefore on disk
before the checkpoint of S exists, and a restore at S truncates later rows, so no key repeats.
"""

from __future__ import annotations

import io
import math
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from .cadence import eval_steps, regular_steps
from .config import TrialConfig
from .hooks import CheckpointError, TrialHooks
from .metrics import ProbeResult, measure
from .model import GPT
from .optim import build_optimizers, lr_factor, set_lr
from .qk_clip import qk_clip_for
from .safeio import safe_write_bytes
from .schema import WEIGHTS_DIR
from .sink import TrialSink
from .storage import ResultsDir
from .trials import trial_row

CHECKPOINT_FILE = "checkpoint.pt"
FLUSH_SECONDS = 30.0


def pick_device(cfg: TrialConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(cfg.device)


def autocast_for(cfg: TrialConfig, device: torch.device):
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def save_checkpoint(folder: Path, state: dict) -> None:
    """Atomic: a reader (or a restore after SIGKILL) sees the old checkpoint or the new one."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # serialised in memory, so a full disk is an OSError (ENOSPC), not torch's RuntimeError
    torch.save(state, buf)
    safe_write_bytes(folder / CHECKPOINT_FILE, buf.getvalue())  # temporary name + rename; removed on failure


def load_checkpoint(folder: Path) -> dict | None:
    """The checkpoint in `folder`, or None. Loaded with weights_only=True: tensors and plain data only,
    so a planted pickle cannot run code; anything else raises CheckpointError."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        why = (
            f"it holds {found.group(1)}, which is not tensors or plain data"
            if found
            else f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
        )
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({why}); refusing to resume from it. "
            "Delete it to start this trial afresh"
        ) from None


class Trial:
    """State of one run; `run()` drives it to the end."""

    def __init__(
        self,
        cfg: TrialConfig,
        results: ResultsDir,
        trial_id: str,
        tokens: data_mod.TokenData,
        hooks: TrialHooks,
        checkpoint_dir: Path | None,
        resume_from: Path | None,
    ):
        self.cfg, self.results, self.trial_id, self.tokens = cfg, results, trial_id, tokens
        self.hooks, self.checkpoint_dir, self.resume_from = hooks, checkpoint_dir, resume_from
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg)
        # On a CPU, as training goes on, attention gradients underflow into subnormal floats, which slow
        # SDPA's backward and the matmuls several-fold on x86 CPUs; flushing them to zero costs nothing
        # measurable in the loss. It is a setting of the whole process: run() turns it on for the
        # trial and off again after it (off is Python's default), so a caller's own floats, a notebook's
        # or a later test's, are not flushed (under it 5e-324 > 0 is false).
        self.flush_denormal = self.device.type == "cpu"
        torch.manual_seed(cfg.seed)
        self.model = GPT(cfg.architecture()).to(self.device)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.optimizers = build_optimizers(self.model, cfg, self.device)
        self.clip = qk_clip_for(self.model, cfg.qk_norm, cfg.qk_clip_tau)  # None unless qk_norm is qk_clip
        self.autocast = autocast_for(cfg, self.device)
        self.sink = TrialSink(results, trial_id)

        def to_dev(a):
            return torch.from_numpy(a).to(self.device)

        self.val = [(to_dev(x), to_dev(y)) for x, y in data_mod.val_batches(tokens, cfg)]
        probe_x, probe_y = data_mod.heldout_windows(tokens, cfg.probe_seqs, cfg.seq_len)
        self.probe_inputs, self.probe_targets = to_dev(probe_x), to_dev(probe_y)
        # With the defaults the val windows are the probe windows: one forward gives both.
        self.val_is_probe = cfg.probe_seqs == cfg.eval_batches * cfg.batch_size
        self.eval_at, self.val_at = set(eval_steps(cfg)), regular_steps(cfg)
        # On a GPU, a probe's CPU half runs in this thread, overlapping training (on a CPU it would
        # only compete with training for the trial's cores)
        self.finisher = ThreadPoolExecutor(1, thread_name_prefix="probe") if self.device.type == "cuda" else None
        self.pending: deque[tuple[int, Future]] = deque()
        self.last_pr = {"q": math.nan, "k": math.nan}
        self.step = 0  # next step to run
        self.wall_prior = 0.0  # wall seconds spent before a restore
        self.last_train_loss = math.nan
        self.last_val_loss = math.nan
        self.tokens_per_step = cfg.batch_size * cfg.seq_len

    # ---- checkpoints -----------------------------------------------------------------------
    def _state(self, wall_s: float) -> dict:
        state = {
            "step": self.step,
            "wall_s": wall_s,
            "trial_id": self.trial_id,
            "config_json": self.cfg.canonical_json(),
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "last_train_loss": self.last_train_loss,
            "last_val_loss": self.last_val_loss,
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        if self.clip is not None:
            state["qk_clip"] = self.clip.state_dict()
        return state

    def _restore(self) -> int | None:
        state = load_checkpoint(self.resume_from) if self.resume_from is not None else None
        if state is None:
            self.sink.truncate_after(-1)  # a fresh start owns its trial's folders: drop stale rows
            return None
        if state["config_json"] != self.cfg.canonical_json():
            raise ValueError(f"checkpoint in {self.resume_from} belongs to a different config; refusing to resume")
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.step, self.wall_prior = int(state["step"]), float(state["wall_s"])
        self.last_train_loss, self.last_val_loss = state["last_train_loss"], state["last_val_loss"]
        torch.set_rng_state(state["torch_rng"])
        if self.clip is not None and "qk_clip" in state:
            self.clip.load_state_dict(state["qk_clip"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.sink.truncate_after(self.step - 1)  # rows of steps >= self.step will be replayed
        return self.step

    # ---- measurements ----------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, step: int, wait: bool = False) -> dict:
        """Probe (and val loss at the regular steps) at `step`; returns the live summary for reports.
        On a GPU the probe's CPU half (eigen-decompositions, rows) finishes in a thread while training
        goes on; `wait` finishes every pending probe first, so the summary's PR is this step's."""
        self.model.eval()
        # Val loss and the attention statistics keep the regular cadence; the early log-spaced probes
        # measure the spectra alone (they resolve fast falls of PR and cost a forward of the probe each).
        val_now = step in self.val_at
        with self.autocast:
            targets = self.probe_targets if val_now and self.val_is_probe else None
            measured = measure(self.model, self.probe_inputs, targets, scores=val_now)
            if not val_now:
                val_loss = None
            elif self.val_is_probe:
                val_loss = measured.loss
            else:
                val_loss = float(np.mean([self.forward(x, y)[1].item() for x, y in self.val]))
        self.model.train()
        if self.clip is not None:  # how often and how hard the clip fired since the last probe
            for name, layer, head, value in self.clip.take():
                self.sink.scalar(step, name, value, layer=layer, head=head)
        if val_loss is not None:
            self.last_val_loss = val_loss
            self.sink.scalar(step, "val_loss", val_loss)
        if self.finisher is None:
            self._record_probe(step, measured.finish())
        else:
            self.pending.append((step, self.finisher.submit(measured.finish)))
        self._drain(wait)
        # the latest val loss (Tune's schedulers want it in every report) and the latest finished PR,
        # head- and layer-averaged and normalised: a handy live signal
        return {"val_loss": self.last_val_loss, **{f"pr_{t}": pr for t, pr in self.last_pr.items()}}

    def _drain(self, wait: bool) -> None:
        """Write the finished probes' rows, in step order; with `wait`, every pending one."""
        while self.pending and (wait or self.pending[0][1].done()):
            step, finishing = self.pending.popleft()
            self._record_probe(step, finishing.result())

    def _record_probe(self, step: int, result: ProbeResult) -> None:
        for name, layer, head, tensor, value in result.scalars:
            self.sink.scalar(step, name, value, layer=layer, head=head, tensor=tensor)
        for (layer, tensor), sigma in result.spectra.items():
            self.sink.spectrum(step, layer, tensor, sigma)
        for tensor in ("q", "k"):
            prs = [v for n, _, _, t, v in result.scalars if n == "pr" and t == tensor]
            self.last_pr[tensor] = float(np.mean(prs)) / self.cfg.d_head

    def _is_checkpoint_step(self, step: int) -> bool:
        every = self.cfg.checkpoint_every
        return self.checkpoint_dir is not None and every > 0 and (step + 1) % every == 0 and step < self.cfg.steps - 1

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> dict:
        if not self.flush_denormal:
            return self._run()
        torch.set_flush_denormal(True)
        try:
            return self._run()
        finally:
            torch.set_flush_denormal(False)

    def _run(self) -> dict:
        cfg = self.cfg
        row = self._row(status="running")
        resumed = self._restore()
        self.hooks.on_start(row, resumed)
        t_start, last_flush = time.perf_counter(), time.perf_counter()
        status, diverged_step = "completed", None

        def wall():
            return self.wall_prior + time.perf_counter() - t_start

        while self.step < cfg.steps:
            step = self.step
            # Evals at step s measure the model after s updates: step 0 is the initialisation.
            report = self._evaluate(step) if step in self.eval_at else {}
            factor = lr_factor(step, cfg)
            set_lr(self.optimizers, factor)
            x, y = (
                torch.from_numpy(a).to(self.device, non_blocking=True)
                for a in data_mod.train_batch(self.tokens, cfg, step)
            )
            with self.autocast:
                _, loss = self.forward(x, y)
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
            for opt in self.optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if self.clip is not None:
                self.clip.apply()  # QK-Clip: after the step, on the step's largest logits
            loss_value = loss.item()
            self.last_train_loss = loss_value
            self.step = step + 1
            tokens = self.step * self.tokens_per_step
            info = {
                "train_loss": loss_value,
                "lr": cfg.lr * factor,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "wall_s": wall(),
            }
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                for name, value in info.items():
                    self.sink.scalar(step, name, value)
            if not math.isfinite(loss_value) or loss_value > cfg.max_loss:
                status, diverged_step = "diverged", step
                break
            self.hooks.on_step(step, info)
            checkpoint = self._is_checkpoint_step(step)
            self._drain(wait=checkpoint)  # a checkpoint at `step` needs every probe up to it on disk
            if report or checkpoint or time.perf_counter() - last_flush > FLUSH_SECONDS:
                self.sink.flush()  # before the checkpoint: rows up to `step` are on disk when it exists
                last_flush = time.perf_counter()
            if checkpoint:
                save_checkpoint(self.checkpoint_dir, self._state(wall()))
            if report or checkpoint:
                report.update(step=step, train_loss=loss_value, tokens=tokens, wall_s=wall(), status="running")
                self.hooks.on_report(step, report, self.checkpoint_dir if checkpoint else None)
        if status == "completed":  # the final eval, after the last update
            report = self._evaluate(cfg.steps, wait=True)
            report.update(
                step=cfg.steps,
                train_loss=self.last_train_loss,
                tokens=self.step * self.tokens_per_step,
                wall_s=wall(),
                status="running",
            )
            self.sink.flush()
            self.hooks.on_report(cfg.steps, report, None)
        self._drain(wait=True)
        if self.finisher is not None:
            self.finisher.shutdown()
        self.sink.flush()
        self.sink.compact()  # the trial has ended: one part per folder
        if cfg.save_final and status == "completed":
            self._save_final()
        row = self._row(status=status, wall_s=wall(), diverged_step=diverged_step)
        self.hooks.on_end(row)
        return row

    def _save_final(self) -> None:
        """weights/<trial_id>.pt: the model's state dict (CPU tensors) and what produced it; plain
        data only, so `torch.load(path, weights_only=True)` loads it."""
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "trial_id": self.trial_id,
            "step": self.step,
            "config_json": self.cfg.canonical_json(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        self.results.write_bytes(buf.getvalue(), WEIGHTS_DIR, f"{self.trial_id}.pt")

    def _row(self, status: str, wall_s: float = 0.0, diverged_step: int | None = None) -> dict:
        return trial_row(
            self.cfg,
            self.tokens.corpus_hash,
            status,
            trial_id=self.trial_id,
            steps_done=self.step,
            final_train_loss=self.last_train_loss,
            final_val_loss=self.last_val_loss,
            wall_s=wall_s,
            diverged_step=diverged_step,
        )


def run_trial(
    cfg: TrialConfig,
    results: ResultsDir | str,
    *,
    trial_id: str | None = None,
    tokens: data_mod.TokenData | None = None,
    hooks: TrialHooks | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict:
    """Train one trial, streaming rows under `results`; returns its trials.parquet row."""
    results = results if isinstance(results, ResultsDir) else ResultsDir(results)
    tokens = tokens if tokens is not None else data_mod.load_tokens(cfg)
    trial = Trial(cfg, results, trial_id or cfg.trial_id(), tokens, hooks or TrialHooks(), checkpoint_dir, resume_from)
    return trial.run()
