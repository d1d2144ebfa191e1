"""The study file's schema: the frozen dataclasses a validated study file becomes.

`harness.config.validate` builds a StudySpec from a parsed file; nothing here reads files or
imports torch, Optuna or MLflow.

A study file has these top-level keys (all but `search` optional)::

    name: quick                       # default: the file's stem
    data: {path: null, train: 0.8, dev: 0.1, test: 0.1, seed: 42}
    budget: {n_trials: 20, steps: 10000, eval_every: 500, timeout: null,
             wall_time: null,         # seconds for run-study, finalize included (e.g. 3600)
             patience: null,          # e.g. {trials: 10, min_delta: 0.001}
             checkpoint_every: null,  # null: at every evaluation; 0: no checkpoints
             keep_checkpoints: false}
    sampler: {type: tpe, seed: 0, ...}
    pruner: {type: median, ...}
    fixed: {context_length: 3, ...}   # hyperparameters held constant
    search:                           # the space, in Optuna's terms
      lr: {type: float, low: 1.0e-3, high: 0.3, log: true}
      batch_size: [32, 64, 128]       # a list is a categorical
      lr_schedule:
        type: categorical
        choices: [constant, step]
        conditional:                  # parameters that exist only under one choice
          step: {lr_step_factor: {type: float, low: 0.05, high: 0.5}}
    enqueue:                          # configs run first, once each (the rest is sampled)
      - {lr: 0.1, batch_size: 32}
      - lecture                       # a named config, cut to the space (NAMED_CONFIGS)
    warm_start: {study: earlier.yaml, top: 20}   # or a study name in this storage
    storage: null                     # default: embedded journal file under mlruns/
    tracking: {uri: null, experiment: null}
    finalize: {enabled: true, top_k: 3, seeds: 3, steps: null, minutes: null, samples: 20,
               ensemble: false,       # true: the final model averages all seeds' models and
                                      # the chosen trial's own
               fill: false,           # true (with ensemble, budget.wall_time): the time left
                                      # trains more seeds of the chosen config
               mix_ngram: false}      # true: the final model mixes in the Kneser-Ney n-gram
    registry: {enabled: true, name: null}   # the final model's registered name (null: name)
    objective:                        # absent: minimize dev loss, no constraints
      minimize: dev_loss              # or pareto: [dev_loss, n_params] (or train_seconds),
                                      # with finalize.pick: knee or {max_n_params: 80000}
      constraints: {n_params: {max: 80000}, steps_per_sec: {min: 500}}
    workers: {count: 1, per_gpu: 1, threads: null, max_retry: 2, heartbeat_s: 60}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.config import hparams
from harness.config.space import Param, iter_params, largest


@dataclass(frozen=True)
class DataConfig:
    """Where the words come from and how they are split."""

    path: str | None = None  # None: the bundled names.txt
    train: float = 0.8
    dev: float = 0.1
    test: float = 0.1
    seed: int = 42  # the lectures' canonical split: random.seed(42); random.shuffle(words)


@dataclass(frozen=True)
class Patience:
    """Stop starting trials when the best dev loss has not improved by `min_delta` over the
    last `trials` complete trials (all workers together)."""

    trials: int = 10
    min_delta: float = 0.0


@dataclass(frozen=True)
class Budget:
    n_trials: int = 20  # total trials of the study, across resumes and workers
    steps: int = 10_000  # optimizer steps per trial
    eval_every: int = 500  # steps between dev evaluations (and pruning decisions)
    timeout: float | None = None  # seconds; stop starting new trials after this
    # Seconds for the whole run-study, finalize included: a new trial starts only while the
    # longest trial so far and the final model's retrainings would still end within it.
    wall_time: float | None = None
    patience: Patience | None = None  # None: the budget alone decides
    # Steps between trial checkpoints (a multiple of eval_every); None: at every evaluation;
    # 0: none (a lost trial then restarts from step 0).
    checkpoint_every: int | None = None
    keep_checkpoints: bool = False  # keep finished trials' checkpoints (default: deleted)

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints; 0 for none."""
        return self.eval_every if self.checkpoint_every is None else self.checkpoint_every


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    options: Mapping[str, Any] = field(default_factory=lambda: {"seed": 0})


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "median"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None  # None: sqlite:///mlruns/mlflow.db
    experiment: str | None = None  # None: the study's name


# Measured figures a constraint can bound, and which bounds make sense for each.
CONSTRAINT_METRICS: Mapping[str, tuple[str, ...]] = {
    "n_params": ("max",),  # known before training: a config over it is never trained
    "steps_per_sec": ("min",),  # measured by the trial
    "ms_per_name": ("max",),  # measured after training: one name sampled at a time
}


@dataclass(frozen=True)
class Constraint:
    metric: str  # one of CONSTRAINT_METRICS
    bound: str  # "max" or "min"
    value: float

    def violation(self, measured: float) -> float:
        """How far `measured` lies outside the bound (<= 0: within it)."""
        return measured - self.value if self.bound == "max" else self.value - measured


# What a Pareto study trades dev loss against: both known for every complete trial.
PARETO_METRICS = ("n_params", "train_seconds")


@dataclass(frozen=True)
class ObjectiveSpec:
    minimize: str = "dev_loss"  # the one objective (the best dev loss of a trial)
    constraints: tuple[Constraint, ...] = ()
    # Pareto mode: dev loss and one of PARETO_METRICS, both minimized (a multi-objective
    # study: its sampler looks for the front, and no pruner runs). None: dev loss alone.
    pareto: str | None = None

    def bounds(self, metric: str) -> bool:
        """Whether a constraint bounds `metric`."""
        return any(c.metric == metric for c in self.constraints)

    @property
    def directions(self) -> list[Literal["minimize"]]:
        """Optuna's study directions: dev loss first, then the Pareto metric if any."""
        return ["minimize"] * (2 if self.pareto else 1)


@dataclass(frozen=True)
class PickRule:
    """How finalize picks one trial from the front in Pareto mode."""

    metric: str  # the objective's Pareto metric
    limit: float | None = None  # the lowest dev loss with metric <= limit; None: the knee

    def as_written(self) -> str:
        """The rule as a study file writes it: `knee` or `{max_n_params: 80000}`."""
        return "knee" if self.limit is None else f"{{max_{self.metric}: {self.limit:g}}}"


@dataclass(frozen=True)
class RegistrySpec:
    enabled: bool = True  # finalize registers the final model in MLflow's Model Registry
    name: str | None = None  # the registered model's name; None: the study's name


@dataclass(frozen=True)
class WorkersSpec:
    count: int = 1  # local worker processes (1: trials run in the run-study process itself)
    per_gpu: int = 1  # with a CUDA device: worker r uses GPU (r // per_gpu) % n_gpus
    threads: int | None = None  # torch threads per worker; None: CPU cores // count, at least 1
    max_retry: int = 2  # a trial whose worker died or was interrupted is re-queued this often
    # Database storages: the heartbeat interval; a trial is stale after 2 intervals without one
    # (Optuna's documented 60 s / 120 s: shorter fails live trials on a busy machine).
    heartbeat_s: int = 60


@dataclass(frozen=True)
class FinalizeSpec:
    enabled: bool = True  # run-study ends by finalizing (unless --no-finalize)
    top_k: int = 3  # candidates: the best complete trials by best dev loss
    seeds: int = 3  # each candidate is retrained on seeds 1..seeds (fresh, not the search's)
    steps: int | None = None  # steps per retraining; None: budget.steps
    # Minutes per retraining: the step count is set from the trial's measured steps/s so that
    # a retraining takes about this long (capped by `steps` when given). None: steps decide.
    minutes: float | None = None
    samples: int = 20  # names sampled from the final model and logged
    # The final model: the chosen config's best seed (false), or the average of its models
    # over all seeds and its trial's own model (true: an ensemble, its own dev and test loss).
    ensemble: bool = False
    # Pareto mode only, and required there: `knee`, or {max_<metric>: limit} for the
    # objective's Pareto metric, e.g. {max_n_params: 80000}. The one picked trial is the
    # candidate (top_k does not apply).
    pick: PickRule | None = None
    # With ensemble and budget.wall_time: the time the search and the retrainings left before
    # the wall time trains more seeds of the chosen config (one per process, as many steps as
    # fit, at least half a retraining's); each joins the ensemble only if it lowers its dev
    # loss. Computing that would otherwise sit idle; the choice is made before, without them.
    fill: bool = False
    # The final model mixes the network (or the ensemble) with the Kneser-Ney n-gram best on
    # dev, the network's weight chosen on dev: counts and networks err differently.
    mix_ngram: bool = False

    def retraining_s(self, trial_s: float, budget_steps: int) -> float:
        """About how long one retraining takes, from its trial's seconds for budget_steps."""
        scaled = trial_s * (self.steps or budget_steps) / budget_steps
        if self.minutes is None:
            return scaled
        return min(scaled, 60 * self.minutes) if self.steps else 60 * self.minutes


@dataclass(frozen=True)
class WarmStart:
    """Start from an earlier study's complete trials: added as finished trials when this study
    is created, so the sampler starts informed (trials that do not fit this space are skipped)."""

    study: str = ""  # a study file (.yaml), or a study's name in this study's storage
    top: int | None = None  # only its best `top` complete trials; None: all of them


# Named configs that `enqueue:` (and `run-study --enqueue NAME`) accept in place of a mapping:
# each is cut to the study's space (a value outside it is left to the sampler).
NAMED_CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "lecture": hparams.DEFAULTS,  # "makemore part 2"'s hand-tuned config: the defaults
}


@dataclass(frozen=True)
class StudySpec:
    name: str
    data: DataConfig
    budget: Budget
    sampler: SamplerSpec
    pruner: PrunerSpec
    fixed: Mapping[str, Any]
    search: tuple[Param, ...]
    storage: str | None
    tracking: TrackingSpec
    finalize: FinalizeSpec
    workers: WorkersSpec
    registry: RegistrySpec
    objective: ObjectiveSpec
    # Configs run first, once each, when the study is created (partial: the rest is sampled).
    enqueue: tuple[Mapping[str, Any], ...]
    warm_start: WarmStart | None
    source: str  # the file it came from (for messages)
    raw: Mapping[str, Any] = field(repr=False, compare=False)  # the YAML after overrides

    def base_hparams(self, **params: Any) -> hparams.HParams:
        """HParams from the defaults, the study's fixed values, then `params`. A precision of
        "auto" must be resolved first (`with_precision`): ValueError otherwise."""
        values = {**self.fixed, **params}
        if values.get("precision") == hparams.AUTO_PRECISION:
            raise ValueError("precision auto is measured before training: resolve it first "
                             "(StudySpec.with_precision)")
        return hparams.make(values)

    @property
    def auto_precision(self) -> bool:
        """Whether `fixed.precision` is "auto" (harness.training.precision chooses it)."""
        return self.fixed.get("precision") == hparams.AUTO_PRECISION

    def with_precision(self, precision: str) -> StudySpec:
        """This spec with `fixed.precision` set to `precision` (what "auto" resolved to)."""
        return dataclasses.replace(self, fixed={**self.fixed, "precision": precision})

    def largest(self, name: str) -> Any:
        """The largest value hyperparameter `name` can take in the study: its searched values,
        and its fixed (or default) value unless every trial samples it."""
        return largest(self.search, name, self.fixed.get(name, hparams.DEFAULTS[name]))

    def search_names(self) -> list[str]:
        """Names of every searched parameter, conditional ones included, once each."""
        return list(dict.fromkeys(p.name for p in iter_params(self.search)))


