"""`python -m orchestrator.lr_study`: the best peak LR per arm, by Optuna through Ray Tune.

    python -m orchestrator.lr_study --config sweeps/lr.yaml [--results DIR] [--trials N]

For each arm (optimizer x qk_norm x width) one Optuna study searches log-LR with a seeded TPE
sampler (Ray Tune's OptunaSearch) while ASHA stops hopeless trials early. Studies live in a
persistent Optuna storage (default: SQLite at <results>/<name>/studies/optuna.db), so running the
command again adds trials to the same studies, and `optuna-dashboard sqlite:///...` opens them.
Writes <results>/<name>/lr_best.parquet (arm, best_lr, best_loss, n_trials, ...) and prints it; a
sweep takes those LRs with `lr: {from_study: <results>/<name>, multipliers: [0.5, 1, 2]}`.
Every trial also writes metrics/ and spectra/ and a trials.parquet row (status pruned when ASHA
stopped it), like a sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pyarrow as pa

from trainer.config import ConfigError, TrialConfig
from trainer.provenance import now_iso, provenance
from trainer.schema import SWEEP_JSON
from trainer.storage import ResultsDir
from trainer.train import format_duration
from trainer.trials import read_trials

from . import runtime
from .spec import LR_BEST_FILE, LRStudySpec, check_results, expand_arms, load_lr_spec
from .sweep import EXIT_BAD_INPUT, EXIT_INTERRUPTED, load_corpora

STUDIES_DIR = "studies"
TUNE_DIR = "tune"
LR_BEST_SCHEMA = pa.schema([
    ("arm", pa.string()), ("optimizer", pa.string()), ("qk_norm", pa.string()), ("width", pa.int64()),
    ("best_lr", pa.float64()), ("best_loss", pa.float64()), ("n_trials", pa.int64()), ("n_complete", pa.int64()),
    ("n_pruned", pa.int64()), ("n_diverged", pa.int64()), ("n_failed", pa.int64()), ("best_trial_id", pa.string()),
    ("study_name", pa.string()), ("storage", pa.string()),
])


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m orchestrator.lr_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="LR-study file (default: sweeps/lr.yaml)")
    p.add_argument("--results", help="results folder or URI (default: the file's `results:`)")
    p.add_argument("--trials", type=int, help="trials to add to each arm's study (default: search.trials_per_arm)")
    p.add_argument("--address", help="join this Ray cluster ('auto' on a head node)")
    p.add_argument("--local", action="store_true", help="always start a private local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs of the private local Ray (default: all)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--verbose-ray", action="store_true", help="let Ray and Tune print their own logs too")
    args = p.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        p.error(f"--trials must be at least 1, got {args.trials}")
    return args


def storage_url(spec: LRStudySpec, results: ResultsDir) -> str:
    """The Optuna storage: the spec's URL, else SQLite beside the results (local results only)."""
    if spec.search.storage:
        return spec.search.storage
    if not results.is_local:
        raise ConfigError(f"search.storage: results are at {results.uri}, where SQLite cannot live; "
                          "give an Optuna storage URL (e.g. postgresql://user@host/db) or a local sqlite:/// path")
    return f"sqlite:///{results.local_path(STUDIES_DIR, 'optuna.db')}"


def open_storage(url: str):
    import optuna

    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(url.removeprefix("sqlite:///")) or ".", exist_ok=True)
    return optuna.storages.RDBStorage(url)


def _study_search_class():
    """OptunaSearch that files ASHA-stopped trials as PRUNED and tags trials with their trial_id."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        def on_trial_result(self, trial_id, result):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and "trial_id" not in ot_trial.user_attrs and result.get("sweep_trial_id"):
                ot_trial.set_user_attr("trial_id", result["sweep_trial_id"])
            super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result and trial_id not in self._completed_trials:
                ot_trial.set_user_attr("status", "failed" if error else result.get("status", "pruned")
                                       if result.get("final") else "pruned")
                if not error and not result.get("final"):  # stopped by ASHA before its last step
                    self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
                    self._completed_trials.add(trial_id)
                    return
            super().on_trial_complete(trial_id, result=result, error=error)

    return StudySearch


def close_stale_trials(storage, study_name: str) -> int:
    """Trials left RUNNING by an interrupted run can never finish: file them as FAIL."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(stale)


def study_size(storage, study_name: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        return 0


def summarize(storage, url: str, arm: str, cfg: TrialConfig) -> dict:
    """One lr_best row: the best completed (not diverged) trial of the arm's study."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=arm, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    diverged = [t for t in complete if t.user_attrs.get("status") == "diverged"]
    candidates = [t for t in complete if t.user_attrs.get("status") != "diverged" and t.value is not None]
    best = min(candidates, key=lambda t: t.value) if candidates else None
    return {
        "arm": arm, "optimizer": cfg.optimizer, "qk_norm": cfg.qk_norm, "width": cfg.width,
        "best_lr": best.params["lr"] if best else None, "best_loss": best.value if best else None,
        "n_trials": len(complete) + sum(t.state == TrialState.PRUNED for t in trials),
        "n_complete": len(complete) - len(diverged), "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "n_diverged": len(diverged), "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "best_trial_id": best.user_attrs.get("trial_id") if best else None, "study_name": arm, "storage": url,
    }


def format_table(rows: list[dict]) -> str:
    header = ("arm", "best_lr", "best_loss", "n_trials", "pruned", "diverged")
    body = [(r["arm"], "n/a" if r["best_lr"] is None else f"{r['best_lr']:.3e}",
             "n/a" if r["best_loss"] is None else f"{r['best_loss']:.4f}", str(r["n_trials"]), str(r["n_pruned"]),
             str(r["n_diverged"])) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        spec, path = load_lr_spec(args.config)
        arms = expand_arms(spec)
        results = check_results(args.results or spec.results, spec.name)
        url = storage_url(spec, results)
        address = None if args.local else (args.address or runtime.running_cluster_address())
        if address is None:
            runtime.check_local_resources(args.num_cpus or os.cpu_count() or 1, spec.resources.cpus_per_trial,
                                          spec.resources.gpus_per_trial)
        tokens = load_corpora(list(arms.values()))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_studies(spec, path, arms, results, url, tokens, address, args)


def run_studies(spec: LRStudySpec, path: str, arms: dict[str, TrialConfig], results: ResultsDir, url: str,
                tokens: dict, address: str | None, args) -> int:
    import optuna
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .monitor import SweepMonitor, register
    from .sweep import _trial_dirname, _trial_name
    from .trainable import RUNG_STEP, TRIAL_KEY, TrainableOptions, train_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_per_arm = args.trials or spec.search.trials_per_arm
    out = sys.stdout
    print(f"lr_study {spec.name}: {len(arms)} arms x {n_per_arm} trials, lr in "
          f"[{spec.search.lr_min:g}, {spec.search.lr_max:g}] -> {results.uri}", file=out, flush=True)
    print(f"  studies: {url}  (optuna-dashboard {url})", file=out, flush=True)
    results.makedirs()
    storage = open_storage(url)
    previous = results.read_json(SWEEP_JSON) if results.exists(SWEEP_JSON) else {}
    started = now_iso()
    corpus = next(iter(tokens.values()))
    meta = {"name": spec.name, "kind": "lr_study", "n_trials": len(read_trials(results)) + len(arms) * n_per_arm,
            "started_at": previous.get("started_at") or started, "finished_at": None,
            "config": spec.model_dump(mode="json"), "config_file": path, "results": results.uri,
            "optuna_storage": url, "corpus_hash": corpus.corpus_hash, "corpus_source": corpus.source,
            "runs": list(previous.get("runs") or []) + [{"started_at": started, "finished_at": None}], **provenance()}

    handle = runtime.start_ray(address, args.num_cpus, local=args.local, quiet=not args.verbose_ray)
    interrupted, summaries = False, []
    t0 = time.monotonic()
    try:
        if not args.verbose_ray:
            runtime.quiet_tune_logging()
        print(f"  on {handle.describe()}", file=out, flush=True)
        meta["runs"][-1]["ray"] = handle.describe()
        results.write_json(meta, SWEEP_JSON)
        cpus = spec.resources.cpus_per_trial
        slots = spec.resources.max_concurrent or max(1, int(runtime_cpus() // cpus))
        options = TrainableOptions(results_uri=results.uri, threads=max(1, int(cpus)), objective=spec.search.metric)
        trainable = tune.with_resources(tune.with_parameters(train_trial, tokens=tokens, options=options),
                                        {"cpu": cpus, "gpu": spec.resources.gpus_per_trial})
        monitor = SweepMonitor(results=results, plan={}, n_planned=len(arms) * n_per_arm,
                               corpus_hash=corpus.corpus_hash, max_retries=spec.failure.max_retries,
                               verbose=not args.quiet)
        register(monitor)
        StudySearch = _study_search_class()
        for arm, cfg in arms.items():
            stale = close_stale_trials(storage, arm)
            existing = study_size(storage, arm)
            note = f" ({existing} trials so far" + (f", {stale} interrupted ones marked failed)" if stale else ")")
            monitor.say("study", f"{arm}{note if existing else ''}: adding {n_per_arm} trials")
            searcher = StudySearch(
                space={"lr": FloatDistribution(spec.search.lr_min, spec.search.lr_max, log=True)},
                metric="objective", mode="min", study_name=arm, storage=storage,
                sampler=optuna.samplers.TPESampler(seed=spec.search.seed + existing,
                                                   n_startup_trials=spec.search.startup_trials),
            )
            scheduler = ASHAScheduler(time_attr=RUNG_STEP, metric="objective", mode="min", max_t=cfg.steps,
                                      grace_period=min(spec.search.grace_steps, cfg.steps),
                                      reduction_factor=spec.search.reduction_factor)
            tuner = tune.Tuner(
                trainable,
                param_space={TRIAL_KEY: cfg.model_dump()},
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n_per_arm,
                                            max_concurrent_trials=slots, reuse_actors=True,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=f"{arm}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=f"{results.uri}/{TUNE_DIR}",
                    failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2), callbacks=[monitor], verbose=0),
            )
            try:
                tuner.fit()
            except KeyboardInterrupt:
                interrupted = True
            counts = monitor.counts()
            summaries.append(summarize(storage, url, arm, cfg))
            if interrupted or counts.running:
                interrupted = True
                break
        monitor.finish()
    finally:
        register(None)
        handle.stop()

    done = {s["arm"] for s in summaries}
    rows = summaries + [summarize(storage, url, arm, cfg) for arm, cfg in arms.items()
                        if arm not in done and study_size(storage, arm)]
    columns = {name: [r.get(name) for r in rows] for name in LR_BEST_SCHEMA.names}
    results.write_table(pa.table(columns, schema=LR_BEST_SCHEMA), LR_BEST_FILE)
    meta["runs"][-1]["finished_at"] = now_iso()
    meta["n_trials"] = len(read_trials(results))
    if not interrupted:
        meta["finished_at"] = meta["runs"][-1]["finished_at"]
    results.write_json(meta, SWEEP_JSON)
    print(f"\nbest LR per arm ({format_duration(time.monotonic() - t0)}):", file=out)
    print(format_table(rows), file=out)
    print(f"\nwrote {results.uri}/{LR_BEST_FILE}", file=out)
    print(f"use it in a sweep: lr: {{from_study: {results.uri}, multipliers: [0.5, 1, 2]}}", file=out, flush=True)
    if interrupted:
        print("interrupted; run the same command again to add trials to the same studies", file=out, flush=True)
        return EXIT_INTERRUPTED
    return 0


def runtime_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


if __name__ == "__main__":
    sys.exit(main())
