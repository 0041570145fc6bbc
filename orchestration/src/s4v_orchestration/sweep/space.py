"""Turn a validated sweep file into Ray Tune objects: search space, scheduler, search algorithm.

Trials report after each validated epoch with the key ``epoch`` (1-based, epochs completed), the
time axis of the scheduler, so ASHA's grace period and milestones are counted in epochs.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.sample import Domain

from s4v_orchestration.sweep.spec import (
    AshaScheduler,
    Choice,
    Distribution,
    Grid,
    LogUniform,
    RandInt,
    SweepSpec,
    Uniform,
)

# The result key every trial reports after each epoch; the time axis for ASHA.
EPOCH_KEY = "epoch"


def to_tune_domain(dist: Distribution) -> Domain | dict[str, list[Any]]:
    """One sweep-file distribution as a Ray Tune domain (a grid is Ray's ``grid_search`` dict)."""
    match dist:
        case Choice(values=values):
            return tune.choice(values)
        case Grid(values=values):
            return tune.grid_search(values)
        case Uniform(low=low, high=high):
            return tune.uniform(low, high)
        case LogUniform(low=low, high=high):
            return tune.loguniform(low, high)
        case RandInt(low=low, high=high):
            return tune.randint(low, high)
    raise TypeError(f"unknown distribution {dist!r}")


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Ray's ``param_space``: a flat dict keyed by the dotted run-config path."""
    return {path: to_tune_domain(dist) for path, dist in spec.search_space.items()}


def make_scheduler(spec: SweepSpec, *, max_epochs: int) -> TrialScheduler:
    """The trial scheduler; ``max_epochs`` is the longest a trial can run (ASHA's ``max_t``)."""
    sched = spec.scheduler
    if isinstance(sched, AshaScheduler):
        max_t = sched.max_t or max_epochs
        if sched.grace_period > max_t:
            raise ValueError(
                f"scheduler.grace_period ({sched.grace_period}) exceeds the trial length "
                f"({max_t} epochs)"
            )
        return ASHAScheduler(
            time_attr=EPOCH_KEY,
            max_t=max_t,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
            brackets=sched.brackets,
        )
    return FIFOScheduler()


def make_search_algorithm(spec: SweepSpec) -> Searcher | BasicVariantGenerator:
    """Random (and grid) sampling by default; Optuna's TPE when ``search.algorithm: optuna``."""
    if spec.search.algorithm == "optuna":
        # Ray's wrapper imports without optuna and fails later with a bare assertion.
        if importlib.util.find_spec("optuna") is None:
            raise RuntimeError(
                "search.algorithm optuna needs the optuna package: "
                "uv sync --extra optuna (or pip install 's4v-orchestration[optuna]')"
            )
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=spec.search.seed)
    # Ray applies TuneConfig.max_concurrent_trials only to a Searcher; this generator takes its own.
    return BasicVariantGenerator(
        random_state=spec.search.seed, max_concurrent=spec.max_concurrent_trials or 0
    )


def make_tune_config(spec: SweepSpec, *, max_epochs: int) -> tune.TuneConfig:
    metric, mode = spec.objective
    search_alg = make_search_algorithm(spec)
    return tune.TuneConfig(
        metric=metric,
        mode=mode,
        num_samples=spec.num_samples,
        max_concurrent_trials=(
            spec.max_concurrent_trials if isinstance(search_alg, Searcher) else None
        ),
        scheduler=make_scheduler(spec, max_epochs=max_epochs),
        search_alg=search_alg,
        # A finished trial's process (torch and s4v already imported) runs the next trial: on a
        # small machine starting a process per trial costs as much as a short trial itself.
        reuse_actors=True,
    )
