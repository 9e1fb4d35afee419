"""The command-line options `orchestrator.sweep` and `orchestrator.lr_study` share (argparse only)."""

from __future__ import annotations

import argparse

from .spec.costs import DEFAULT_GPU, DEFAULT_MFU, GPUS


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_ray_arguments(p: argparse.ArgumentParser, *, address_help: str) -> None:
    """--address, --local, --num-cpus, --quiet, --verbose-ray."""
    p.add_argument("--address", help=address_help)
    p.add_argument("--local", action="store_true", help="always start a private local Ray, even on a cluster node")
    p.add_argument("--num-cpus", type=int, help="CPUs of the private local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the summary")
    p.add_argument("--verbose-ray", action="store_true", help="let Ray and Tune print their own logs too")


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """--dry-run, --gpu, --mfu."""
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


def check_num_cpus(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.num_cpus is not None and args.num_cpus < 1:
        p.error(f"--num-cpus must be at least 1, got {args.num_cpus}")


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
    )
