"""How fast this machine runs the trainer now, against when its CPU rows were calibrated.

A cloud machine of the same name is not always equally fast: on the 2-core machine the default
sweep's CPU steps took 1.4-1.9x their calibrated CPU time a day after the calibration (1.66x over
its arms; same code, same libraries: docs/findings.md), and the plan from those rows said 8:24 for
a sweep of 13:51. So `--dry-run` times a reference step here and scales the table's `cpu` rows
by it:

    scale = reference step now / reference step at calibration (the table's `cpu_reference`)

Both are the CPU seconds of the same work in one process alone with one torch thread: forward,
backward and an SGD update of the default sweep's width-64 model (depth 2, d_head 32, batch 16 x 128,
random byte tokens), the fastest of REFERENCE_STEPS steps after WARM_UP of warm-up. The fastest,
because other work on the machine only adds time (between processes it varied by 5%, the median
by 7%); CPU time, as the calibration's, so that another process leaves it (nearly) alone. It costs
a dry run about 3 s (torch's import, 1-1.5 s, the model and 25 steps: 3.6-3.9 s in all). The plan says the scale it used;
QKC_SPEED_PROBE=0 in the environment turns the probe off (the rows as they are).
"""

from __future__ import annotations

import functools
import os
import time

REFERENCE = dict(width=64, depth=2, d_head=32, seq_len=128, batch_size=16, vocab_size=256)
REFERENCE_STEPS = 20
WARM_UP = 5  # steps left out: the first ones in a process build oneDNN's kernels and run slower
# Below this the probe's own noise (about 5% between processes) would be mistaken for a change
NOISE = 0.10


def reference_step_s(steps: int = REFERENCE_STEPS) -> float:
    """CPU seconds of the fastest reference train step (the module's docstring), measured now in this
    process with one torch thread (the caller's thread count and denormal setting are restored)."""
    import torch

    from trainer.config import TrialConfig
    from trainer.model import GPT

    cfg = TrialConfig(**REFERENCE, qk_norm="none", device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the trainer runs on a CPU
    try:
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = GPT(cfg.architecture())
        params = list(model.parameters())
        shape = (cfg.batch_size, cfg.seq_len)
        times = []
        for i in range(WARM_UP + steps):
            x = torch.randint(0, cfg.vocab_size, shape, generator=generator)
            y = torch.randint(0, cfg.vocab_size, shape, generator=generator)
            t0 = time.process_time()
            _, loss = model(x, y)
            loss.backward()
            with torch.no_grad():  # a plain SGD update: torch.optim's first optimizer imports
                torch._foreach_add_(params, [p.grad for p in params], alpha=-1e-3)  # torch._dynamo, 1.1 s
            for p in params:
                p.grad = None
            if i >= WARM_UP:
                times.append(time.process_time() - t0)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    return min(times)


@functools.cache
def measured_now() -> float:
    """`reference_step_s()` once per process (a --chunks-for plan costs many chunk sizes)."""
    return reference_step_s()


def enabled() -> bool:
    return os.environ.get("QKC_SPEED_PROBE", "1").strip() not in ("0", "false", "no", "off")


def scale_now(reference: dict | None) -> tuple[float, str]:
    """(the factor for the table's cpu rows, a line saying why) from the table's `cpu_reference`
    ({"step_s": ..., "source": ...}; None in a table calibrated before it existed: 1.0)."""
    if not reference or not reference.get("step_s"):
        return 1.0, "cpu rows as calibrated (the table has no reference step to compare this machine with)"
    if not enabled():
        return 1.0, "cpu rows as calibrated (QKC_SPEED_PROBE=0: this machine's speed not measured)"
    try:
        now = measured_now()
    except Exception as e:  # noqa: BLE001 - a plan never fails for its speed probe
        return 1.0, f"cpu rows as calibrated (the reference step could not be timed here: {type(e).__name__}: {e})"
    ratio = now / float(reference["step_s"])
    measured = f"a reference step takes {now * 1e3:.1f} ms of CPU here now, {float(reference['step_s']) * 1e3:.1f} ms at calibration"
    if abs(ratio - 1) < NOISE:
        return 1.0, f"cpu rows as calibrated ({measured}: within {NOISE:.0%}, the probe's noise)"
    return ratio, f"cpu rows scaled by {ratio:.2f} ({measured})"
