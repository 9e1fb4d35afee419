"""The command-line options `orchestrator.sweep` and `orchestrator.lr_study` share (argparse only).

`parser()` is trainer.cli's ArgumentParser: a mistyped flag is one line naming the closest one
(`unrecognized argument --dry-rn (did you mean --dry-run?)`, exit 2) and `--help` shows each
option's default. `spec_arguments()` is the parent parser (argparse `parents=[...]`) of every
command that runs a spec file: --config NAME, --set, --results, --resume and --progress-every,
with one help text each, so the commands cannot drift apart.
"""

from __future__ import annotations

import argparse
import shlex

from trainer.cli import ArgumentParser, HelpFormatter

from .spec.costs import DEFAULT_GPU, GPUS

__all__ = ["ArgumentParser", "HelpFormatter", "parser", "spec_arguments"]

PROGRESS_EVERY_S = 30.0  # --progress-every's default


def parser(prog: str, doc: str, parents: list[argparse.ArgumentParser] | None = None) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter, parents=parents or [])


def spec_arguments(*, kind: str, bundled: str, default: str) -> ArgumentParser:
    """The parent parser of a command that runs a spec file (`kind`: "sweep" or "LR-study"; `bundled`:
    the bundled files' names; `default`: the one used without --config). The other four options have
    the same help text in every command."""
    p = ArgumentParser(add_help=False)
    p.add_argument(
        "--config",
        metavar="NAME",
        help=f"{kind} file, or a bundled one's name: {bundled} (default: {default}); a file of the other "
        "kind names the command that runs it",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the file (repeatable; values are YAML): a dotted path into it, "
        "train.steps=50, resources.cpus_per_trial=2, failure.max_retries=0, grid.seed=[0,1] (a sweep), "
        "search.trials_per_arm=4 or arms.width=[64] (an LR study); a plain key is a grid axis or an arm "
        "the file has, else a train setting",
    )
    p.add_argument(
        "--results",
        metavar="DIR",
        help="results folder or URI; the run goes in <results>/<name> (default: the file's `results:`)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in <results>/<name>, running only what it left unfinished (a "
        "sweep's trials, from their checkpoints; an LR study's trials left of its budget per arm); finished "
        "trials never run again",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=PROGRESS_EVERY_S,
        metavar="S",
        help="seconds between progress lines (one also follows each trial)",
    )
    return p


def again_command(prog: str, argv: list[str], drop: tuple[str, ...] = ()) -> str:
    """The command that continues this run: its arguments without --resume (and the options in
    `drop`, with their values), then --resume."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--resume":
            continue
        if arg in drop:
            skip = True
            continue
        if arg.split("=", 1)[0] in drop:
            continue
        kept.append(arg)
    return f"{prog} {shlex.join(kept + ['--resume'])}"


def check_progress_every(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.progress_every >= 0:  # a negative number or nan (0: a line at every event; inf: none)
        p.error(f"--progress-every must be 0 or more seconds, got {args.progress_every}")


ADDRESS_HELP = (
    "join this Ray cluster ('auto' on a head node) (default: the cluster this machine belongs to if there is "
    "one, else a private local Ray)"
)


def add_ray_arguments(p: argparse.ArgumentParser, *, address_help: str = ADDRESS_HELP) -> None:
    """--address, --local, --num-cpus, --quiet, --verbose-ray."""
    p.add_argument("--address", help=address_help)
    p.add_argument("--local", action="store_true", help="always start a private local Ray, even on a cluster node")
    p.add_argument("--num-cpus", type=int, help="CPUs of the private local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the summary")
    p.add_argument("--verbose-ray", action="store_true", help="let Ray and Tune print their own logs too")


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """--dry-run and what it takes: --json, --device-kind, --gpu, --num-gpus, --mfu, --calibration."""
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the plan (trials, tokens, FLOPs, memory, GPUs, GPU- or CPU core-hours and the "
        "wall time predicted from measured throughput, storage); starts nothing, writes nothing",
    )
    p.add_argument(
        "--json", action="store_true", help="with --dry-run: print the plan as one JSON object, nothing else"
    )
    p.add_argument(
        "--device-kind",
        metavar="KIND",
        help="with --dry-run: the device whose calibration rows cost the plan: cpu, h200, h100, a100, ... "
        "(default: cpu for a CPU sweep, else the GPU of --gpu)",
    )
    p.add_argument(
        "--gpu",
        default=DEFAULT_GPU,
        metavar="NAME",
        help=f"GPU type the plan (--dry-run, and a run's first ETA) packs onto and costs on: "
        f"{', '.join(g.name for g in GPUS)} (default {DEFAULT_GPU})",
    )
    p.add_argument(
        "--num-gpus", type=int, metavar="N", help="with --dry-run: GPUs the predicted wall time assumes (default 1)"
    )
    p.add_argument(
        "--mfu",
        type=float,
        default=None,
        help="with --dry-run: also show GPU-hours at this assumed model FLOPs utilisation (the plan's own are measured)",
    )
    p.add_argument(
        "--calibration",
        metavar="FILE",
        help="with --dry-run: a calibration table written by --calibrate --out FILE (default: the package's)",
    )


def check_num_cpus(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.num_cpus is not None and args.num_cpus < 1:
        p.error(f"--num-cpus must be at least 1, got {args.num_cpus}")
    if getattr(args, "num_gpus", None) is not None and args.num_gpus < 1:
        p.error(f"--num-gpus must be at least 1, got {args.num_gpus}")
    if getattr(args, "json", False) and not getattr(args, "dry_run", False):
        p.error("--json goes with --dry-run")


def run_options(args: argparse.Namespace) -> dict:
    """The RunOptions fields from parsed arguments."""
    return dict(
        config=args.config,
        results=args.results,
        address=args.address,
        local=args.local,
        num_cpus=args.num_cpus,
        quiet=args.quiet,
        verbose_ray=args.verbose_ray,
        gpu=args.gpu,
        mfu=args.mfu,
        device_kind=args.device_kind,
        num_gpus=args.num_gpus,
        calibration=args.calibration,
        json=args.json,
    )
