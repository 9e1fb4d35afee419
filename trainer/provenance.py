"""What produced a result: versions, git commit, hardware. Saved beside every run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "pyarrow", "polars", "ray", "optuna", "pydantic")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of this project's checkout (with '-dirty' if it has changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# The SIMD extensions that decide which kernels torch's CPU code (ATen, oneDNN) runs: a float sum
# in another order rounds differently, so two machines that differ here give results that differ
# in their last digits, more in a trial near its stability limit (docs/results.md, "Bit for bit").
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and SIMD_FLAGS it has, from /proc/cpuinfo (`cpuinfo`: its text, for
    tests); the model from `platform.processor()` and no flags where there is none (macOS,
    Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = None, None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return {
        "cpu_model": model or platform.processor() or None,
        "cpu_simd": None if flags is None else [f for f in SIMD_FLAGS if f in flags],
    }


def torch_cpu_capability() -> str | None:
    """The instruction set torch's own CPU kernels dispatch to (AVX512, AVX2, DEFAULT, ...; the
    environment variable ATEN_CPU_CAPABILITY can lower it), None without torch."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return None


def hardware() -> dict:
    """The machine that ran this process: host, architecture, CPUs, the CPU's model and SIMD
    extensions and torch's CPU kernel level (what decides the last digits of a CPU result), and
    the GPU when there is one. On a cluster, sweep.json's is the driver's machine."""
    info = {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count()}
    info.update(cpu_description())
    info["torch_cpu_capability"] = torch_cpu_capability()
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def provenance() -> dict:
    return {"versions": versions(), "git_commit": git_commit(), "hardware": hardware()}


def sweep_record(
    *,
    name: str,
    kind: str,
    n_trials: int,
    started_at: str,
    config: dict,
    corpus,
    finished_at: str | None = None,
    **extra,
) -> dict:
    """sweep.json: what every run writes beside its results (a standalone trial, a sweep, an LR study).

    The keys here are common to all three; `kind` ("trial", "sweep" or "lr_study") says which wrote
    it, and `extra` carries the keys of that kind (a sweep's grid and runs, a study's storage, ...).
    `corpus` is the trainer.data.TokenData every trial read: its hash, source and what was held out
    (documents and token counts) go on record, so a reader can check the held-out set.
    """
    return {
        "name": name,
        "kind": kind,
        "n_trials": n_trials,
        "started_at": started_at,
        "finished_at": finished_at,
        "config": config,
        "corpus_hash": corpus.corpus_hash,
        "corpus_source": corpus.source,
        "heldout": corpus.describe(),
        **extra,
        **provenance(),
    }
