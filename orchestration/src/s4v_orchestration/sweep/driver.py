"""Run a sweep: resolve the base run config, open the MLflow parent run, run the trials with Ray Tune.

Flow of :func:`run_sweep`:

1. Build the base run config (dataset preset, optional YAML, the sweep's ``set``) and check every
   search-space path against it, so a typo fails before Ray starts.
2. Create the MLflow store, experiment and parent run up front (or reopen them on ``--resume``).
3. Start a local Ray (or join ``--address``), then ``Tuner.fit()`` (or ``Tuner.restore()``).
4. As each trial ends, :class:`TrialRecorder` tags its child run (completed, stopped_early or
   failed); at the end the parent run gets the best trial's metrics, config and checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow import MlflowClient
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS

from s4v_orchestration.config import RunConfig
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.paths import default_tracking_uri
from s4v_orchestration.sweep.cluster import check_trials_can_log, connect_ray
from s4v_orchestration.sweep.space import EPOCH_KEY, make_tune_config, param_space
from s4v_orchestration.sweep.spec import SweepFileError, SweepSpec, candidate_values
from s4v_orchestration.sweep.tracking import (
    TAG_FILE_SHA256,
    TAG_STATE,
    TAG_SWEEP,
    SweepRecord,
    TrialOutcome,
    TrialState,
    error_summary,
    find_parent_by_storage,
    finish_parent_run,
    normalise_tracking_uri,
    record_trial,
    reopen_parent_run,
    start_parent_run,
    tidy_trial_runs,
)
from s4v_orchestration.sweep.trainable import (
    CHECKPOINT_FILE,
    EPOCHS_KEY,
    RUN_ID_KEY,
    TrialConfigError,
    TrialContext,
    apply_values,
    run_trial,
    trial_run_name,
)
from s4v_orchestration.tasks import get_task
from s4v_orchestration.tracking import experiment_id_for, open_client

logger = logging.getLogger(__name__)
# One line per trial event (started, completed, stopped early, failed); `s4v sweep` prints them.
# A logger, not a function passed in: Ray pickles the callbacks with the sweep's state.
events = logging.getLogger("s4v_orchestration.sweep.events")

RECORD_FILE = "s4v-sweep.json"


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; the message says what to do."""


# --- 1. the base run config ------------------------------------------------------------------


def resolve_base_config(spec: SweepSpec, source: str = "sweep file") -> RunConfig:
    """Preset + ``config`` file + ``set``, with every search-space path checked against it.

    Each path is tried with the values that bound its distribution (every choice, both ends of
    a range), so ``solver.lrr`` or ``model.side_dim: {low: -1, ...}`` fails here, naming the path.
    """
    base = load_run_config(spec.task, spec.dataset, spec.config)
    try:
        base = apply_values(base, spec.set)
    except TrialConfigError as exc:
        raise SweepFileError(f"{source}: set: {exc}") from None
    for path, dist in spec.search_space.items():
        for value in candidate_values(dist):
            try:
                apply_values(base, {path: value})
            except TrialConfigError as exc:
                raise SweepFileError(
                    f"{source}: search_space[{path!r}]: {value!r} is not usable: {exc}"
                ) from None
    return base.with_defaults()


def max_epochs(spec: SweepSpec, base: RunConfig) -> int:
    """The longest a trial runs, for ASHA's ``max_t``."""
    if "solver.epochs" in spec.search_space and getattr(spec.scheduler, "max_t", 1) is None:
        raise SweepFileError(
            "solver.epochs is searched: set scheduler.max_t to the largest number of epochs"
        )
    return base.solver.epochs


# --- 2. MLflow: the parent run, and marking children as trials end ----------------------------


def _outcome_from_trial(trial: Any, state: TrialState, error: str | None = None) -> TrialOutcome:
    result = dict(trial.last_result or {})
    return TrialOutcome(
        trial_id=trial.trial_id,
        run_name=trial_run_name(trial.trial_id),
        state=state,
        params=dict(trial.config),
        epochs_completed=int(result.get(EPOCH_KEY, 0)),
        mlflow_run_id=result.get(RUN_ID_KEY) or None,
        error=error,
    )


class TrialRecorder(tune.Callback):
    """Tags each trial's MLflow child run with how the trial ended, as soon as it ends.

    Runs where the Tune loop runs (the driver, or the head node with ``ray://``), one event at a
    time, so its MLflow writes never overlap each other. Each event is also one line on the
    ``events`` logger.
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        metric: str,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.metric = metric

    def _record(self, outcome: TrialOutcome) -> None:
        try:
            record_trial(
                MlflowClient(self.tracking_uri),
                experiment_id=self.experiment_id,
                parent_run_id=self.parent_run_id,
                outcome=outcome,
            )
        except Exception:
            # Bookkeeping must not end the sweep; the final pass in run_sweep retries.
            logger.exception("could not record trial %s in MLflow", outcome.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        values = ", ".join(f"{k}={_short(v)}" for k, v in (trial.config or {}).items())
        events.info(f"trial {trial.trial_id} started: {values}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epochs = int(result.get(EPOCH_KEY, 0))
        done = epochs >= int(result.get(EPOCHS_KEY, 1 << 30))
        outcome = _outcome_from_trial(trial, "completed" if done else "stopped_early")
        self._record(outcome)
        how = "completed" if done else "stopped early by the scheduler"
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4g}" if isinstance(value, int | float) else "no metric"
        events.info(f"trial {trial.trial_id} {how} after {epochs} epochs: {shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray writes the traceback next to the driver before it calls back.
        error_file = Path(trial.error_file) if trial.error_file else None
        if error_file is not None and error_file.is_file():
            error = error_file.read_text()
        else:
            error = f"trial {trial.trial_id} raised (see {trial.path})"
        self._record(_outcome_from_trial(trial, "failed", error=error))
        events.info(f"trial {trial.trial_id} failed: {error_summary(error)}")


def _short(value: Any) -> str:
    """A sampled value in 4 significant digits (floats), as the tables show it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- 3. the sweep ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepOutcome:
    """What a finished (or interrupted) sweep reports."""

    name: str
    experiment_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str
    mode: str
    best: TrialOutcome | None
    interrupted: bool
    num_trials: int
    num_errors: int


# Keys Ray adds to every result, and ours; what is left are the run's own metrics.
_NOT_RUN_METRICS = {*AUTO_RESULT_KEYS, "trial_id", "done", EPOCH_KEY, EPOCHS_KEY, RUN_ID_KEY}


def run_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics ``train()`` reported in a Ray result (without Ray's bookkeeping keys)."""
    return {
        key: float(value)
        for key, value in result.items()
        if key not in _NOT_RUN_METRICS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


def _was_interrupted(grid: tune.ResultGrid, expected_trials: int) -> bool:
    """Whether the sweep stopped before every trial ended (Ctrl-C).

    Read from the experiment state Ray saved when the loop ended: the trials in ``grid`` were
    stopped during clean-up since, so an interrupted trial counts as terminated there.
    """
    saved = tune.ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem)
    ended = sum(trial.status in ("TERMINATED", "ERROR") for trial in saved.trials)
    return ended < max(len(saved.trials), expected_trials)


def sweep_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _best_outcome(grid: tune.ResultGrid, metric: str, mode: str) -> TrialOutcome | None:
    """The best trial by its last validated epoch, with that epoch's metrics and checkpoint.

    Ranked and reported on the same epoch: the last one each trial reported, as ASHA compares
    trials at its rungs and as MLflow's runs table and ``s4v runs`` show them (a metric's latest
    value). Ray keeps the latest checkpoint of every trial besides its two best.
    """
    try:
        result = grid.get_best_result(metric=metric, mode=mode, scope="last")
    except RuntimeError:
        return None  # no trial reported the metric
    checkpoint = result.checkpoint
    trial_id = result.metrics["trial_id"]
    return TrialOutcome(
        trial_id=trial_id,
        run_name=trial_run_name(trial_id),
        state="completed",
        params=dict(result.config or {}),
        metrics=run_metrics(result.metrics),
        epochs_completed=int(result.metrics.get(EPOCH_KEY, 0)),
        mlflow_run_id=result.metrics.get(RUN_ID_KEY) or None,
        checkpoint=f"{checkpoint.path}/{CHECKPOINT_FILE}" if checkpoint else None,
    )


def _resume_record(
    experiment_path: str,
    record_path: Path | None,
    tracking_uri: str | None,
    digest: str,
    source: str,
) -> SweepRecord:
    """The MLflow runs of the sweep being resumed, checked against the sweep file."""
    if not tune.Tuner.can_restore(experiment_path):
        raise SweepError(f"nothing to resume at {experiment_path}: run without --resume first")
    if record_path is not None and record_path.is_file():
        record = SweepRecord.load(record_path)
        if tracking_uri is not None and normalise_tracking_uri(tracking_uri) != record.tracking_uri:
            raise SweepError(f"the sweep was tracked in {record.tracking_uri}; resume it there")
    else:
        # Cloud storage holds only Ray's state: find the parent run by the folder it names.
        uri = normalise_tracking_uri(tracking_uri or default_tracking_uri())
        parent = find_parent_by_storage(MlflowClient(uri), experiment_path)
        if parent is None:
            raise SweepError(
                f"no MLflow parent run for {experiment_path} in {uri}: pass the --tracking-uri "
                "the sweep was started with"
            )
        record = SweepRecord(
            name=parent.data.tags[TAG_SWEEP],
            tracking_uri=uri,
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
            sweep_sha256=parent.data.tags.get(TAG_FILE_SHA256, ""),
        )
    if record.sweep_sha256 != digest:
        raise SweepError(
            f"{source} changed since the sweep started; resume with the original file or "
            "start a new sweep with another name"
        )
    return record


def _new_record(
    spec: SweepSpec,
    base: RunConfig,
    *,
    experiment_path: str,
    tracking_uri: str | None,
    sweep_text: str,
    digest: str,
) -> SweepRecord:
    """Create the MLflow store, experiment and parent run of a new sweep."""
    uri = normalise_tracking_uri(tracking_uri or base.tracking.uri)
    client = open_client(uri)
    metric, mode = spec.objective
    experiment_id = experiment_id_for(
        client, spec.experiment or base.tracking.experiment, metric, greater_is_better=mode == "max"
    )
    parent_run_id = start_parent_run(
        client,
        experiment_id=experiment_id,
        spec=spec,
        sweep_text=sweep_text,
        storage=experiment_path,
        sweep_sha256=digest,
    )
    return SweepRecord(
        name=spec.name,
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        sweep_sha256=digest,
    )


def _new_tuner(
    spec: SweepSpec,
    base: RunConfig,
    trainable: Any,
    record: SweepRecord,
    storage: str,
    verbose: int,
) -> tune.Tuner:
    metric, mode = spec.objective
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=make_tune_config(spec, max_epochs=max_epochs(spec, base)),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2,  # the two best epochs; Ray always keeps the latest as well
                checkpoint_score_attribute=metric,
                checkpoint_score_order=mode,
            ),
            callbacks=[
                TrialRecorder(
                    tracking_uri=record.tracking_uri,
                    experiment_id=record.experiment_id,
                    parent_run_id=record.parent_run_id,
                    metric=metric,
                )
            ],
            verbose=verbose,
        ),
    )


def _fit(
    spec: SweepSpec,
    base: RunConfig,
    record: SweepRecord,
    client: MlflowClient,
    resume: bool,
    experiment_path: str,
    storage: str,
    verbose: int,
) -> tune.ResultGrid:
    """Run the trials to the end (or to Ctrl-C); the parent run is closed if this raises."""
    context = TrialContext(
        base_config=base.model_dump(mode="json"),
        metric=spec.objective[0],
        tracking_uri=record.tracking_uri,
        experiment=client.get_experiment(record.experiment_id).name,
        parent_run_id=record.parent_run_id,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    try:
        if resume:
            # Finished trials stay finished; unfinished ones continue from their last checkpoint
            # and failed ones are retried from theirs.
            tuner = tune.Tuner.restore(experiment_path, trainable, resume_errored=True)
        else:
            tuner = _new_tuner(spec, base, trainable, record, storage, verbose)
        if verbose > 0:
            return tuner.fit()
        # Tune prints its experiment banner and a TensorBoard hint with print() whatever its
        # verbosity: kept out of the terminal (and logged at DEBUG); s4v prints the trial events.
        banner = io.StringIO()
        try:
            with contextlib.redirect_stdout(banner):
                return tuner.fit()
        finally:
            logger.debug("Ray Tune's output:\n%s", banner.getvalue())
    except BaseException as exc:
        # No parent run is left RUNNING: a second Ctrl-C leaves it resumable, an error failed.
        interrupted = isinstance(exc, KeyboardInterrupt)
        client.set_tag(record.parent_run_id, TAG_STATE, "interrupted" if interrupted else "failed")
        client.set_terminated(record.parent_run_id, "KILLED" if interrupted else "FAILED")
        raise


@dataclass(frozen=True, kw_only=True, slots=True)
class _SweepPlan:
    """Where a sweep's state and runs live, settled (and checked) before Ray starts."""

    base: RunConfig
    experiment_path: str  # Ray's experiment folder, <storage>/<name>
    record_path: Path | None  # the MLflow ids beside Ray's state; None on cloud storage
    digest: str  # the sweep file's SHA-256, which guards a resume
    tracking_uri: str
    resumed: SweepRecord | None  # the runs of the sweep being resumed; None for a new sweep


def run_sweep(
    spec: SweepSpec,
    *,
    sweep_text: str,
    storage: str,
    tracking_uri: str | None = None,
    address: str | None = None,
    resume: bool = False,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    verbose: int = 0,
    source: str = "sweep file",
    announce: Callable[[str], None] = logger.info,
) -> SweepOutcome:
    """Run (or resume) a sweep to the end and record it in MLflow.

    Args:
        spec: the validated sweep file (``name`` filled in).
        sweep_text: the file's text, logged on the parent run and hashed to guard ``resume``.
        storage: folder (or ``s3://``-style URI) that holds Ray's experiment folder ``<name>``;
            shared storage when trials run on several machines.
        tracking_uri: MLflow store; None takes the run config's (default ``sqlite:///mlflow.db``).
        address: None starts a local Ray; ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` joins one.
        resume: continue the interrupted sweep ``<storage>/<name>`` (finished trials are kept).
        num_cpus, num_gpus: size of a local Ray (default: the whole machine).
        verbose: Ray's own output: 0 none (s4v's line per trial event only), 1 its status table
            and INFO messages, 2 also every result and the trials' output.
        source: how error messages name the sweep file.
        announce: prints progress notes (data preparation).

    Raises:
        SweepError, SweepFileError, ConfigError, ClusterError: before any trial runs, for what
            the user can fix.
    """
    _check_arguments(spec, address, num_cpus, num_gpus)
    plan = _plan_sweep(
        spec,
        sweep_text=sweep_text,
        storage=storage,
        tracking_uri=tracking_uri,
        resume=resume,
        source=source,
    )
    # Prepared once here: concurrent trials would otherwise generate the synthetic set at once.
    get_task(plan.base.task).prepare_data(plan.base, announce=announce)

    owns_ray = connect_ray(address, num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose)
    try:
        check_trials_can_log(plan.tracking_uri, address)
        record, client = _open_parent_run(spec, plan, sweep_text)
        grid = _fit(spec, plan.base, record, client, resume, plan.experiment_path, storage, verbose)
    finally:
        if owns_ray:
            ray.shutdown()

    return _report(spec, plan, record, client, grid)


def _check_arguments(
    spec: SweepSpec, address: str | None, num_cpus: int | None, num_gpus: int | None
) -> None:
    """Refuse arguments that contradict each other, before anything is read."""
    if spec.name is None:
        raise ValueError("the sweep needs a name; load_sweep_file() takes it from the file name")
    if address is not None and (num_cpus is not None or num_gpus is not None):
        raise SweepError("--num-cpus/--num-gpus size a local Ray; a cluster has its own resources")


def _plan_sweep(
    spec: SweepSpec,
    *,
    sweep_text: str,
    storage: str,
    tracking_uri: str | None,
    resume: bool,
    source: str,
) -> _SweepPlan:
    """The base run config and where the sweep lives; checks that it can start (or resume)."""
    base = resolve_base_config(spec, source)
    experiment_path = f"{storage.rstrip('/')}/{spec.name}"
    local_storage = "://" not in storage
    record_path = Path(experiment_path) / RECORD_FILE if local_storage else None
    digest = sweep_sha256(sweep_text)

    resumed = None
    if resume:
        resumed = _resume_record(experiment_path, record_path, tracking_uri, digest, source)
        uri = resumed.tracking_uri
    elif local_storage and Path(experiment_path).exists():
        raise SweepError(
            f"{experiment_path} already exists: pass --resume to continue that sweep, or give "
            "this one another name (name: in the sweep file)"
        )
    else:
        uri = normalise_tracking_uri(tracking_uri or base.tracking.uri)
    return _SweepPlan(
        base=base,
        experiment_path=experiment_path,
        record_path=record_path,
        digest=digest,
        tracking_uri=uri,
        resumed=resumed,
    )


def _open_parent_run(
    spec: SweepSpec, plan: _SweepPlan, sweep_text: str
) -> tuple[SweepRecord, MlflowClient]:
    """Reopen the resumed sweep's parent run, or create it and save its record beside Ray's."""
    if plan.resumed is not None:
        client = MlflowClient(plan.tracking_uri)
        reopen_parent_run(client, plan.resumed.parent_run_id)
        return plan.resumed, client
    record = _new_record(
        spec,
        plan.base,
        experiment_path=plan.experiment_path,
        tracking_uri=plan.tracking_uri,
        sweep_text=sweep_text,
        digest=plan.digest,
    )
    if plan.record_path is not None:
        plan.record_path.parent.mkdir(parents=True, exist_ok=True)
        record.save(plan.record_path)
    return record, MlflowClient(plan.tracking_uri)


def _report(
    spec: SweepSpec,
    plan: _SweepPlan,
    record: SweepRecord,
    client: MlflowClient,
    grid: tune.ResultGrid,
) -> SweepOutcome:
    """Mark the trial runs, close the parent run with the best trial, and say how it went."""
    metric, mode = spec.objective
    interrupted = _was_interrupted(grid, spec.total_trials())
    best = _best_outcome(grid, metric, mode)
    best_config = None
    if best is not None:
        best_config = apply_values(plan.base, best.params).model_dump(mode="json")
    tidy_trial_runs(
        client,
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        finished=not interrupted,
    )
    finish_parent_run(
        client,
        parent_run_id=record.parent_run_id,
        best=best,
        best_config=best_config,
        interrupted=interrupted,
    )
    return SweepOutcome(
        name=spec.name,
        experiment_path=plan.experiment_path,
        tracking_uri=record.tracking_uri,
        experiment_id=record.experiment_id,
        parent_run_id=record.parent_run_id,
        metric=metric,
        mode=mode,
        best=best,
        interrupted=interrupted,
        num_trials=len(grid),
        num_errors=grid.num_errors,
    )
