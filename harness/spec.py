"""Study files: YAML -> a frozen, validated StudySpec.

Every error of a file is collected with its key path and raised once, as a SpecError. Unknown
keys are rejected with the closest valid key suggested. `--set a.b=value` overrides are applied
to the YAML before validation, so they are checked like the file itself.

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
               fill: false}           # true (with ensemble, budget.wall_time): the time left
                                      # trains more seeds of the chosen config
    registry: {enabled: true, name: null}   # the final model's registered name (null: name)
    objective:                        # absent: minimize dev loss, no constraints
      minimize: dev_loss              # or pareto: [dev_loss, n_params] (or train_seconds),
                                      # with finalize.pick: knee or {max_n_params: 80000}
      constraints: {n_params: {max: 80000}, steps_per_sec: {min: 500}}
    workers: {count: 1, per_gpu: 1, threads: null, max_retry: 2, heartbeat_s: 60}
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import hparams
from harness.data import DataConfig


class SpecError(ValueError):
    """A study file (or its overrides) is invalid. `errors` holds every problem found."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        n = len(self.errors)
        super().__init__(f"{source}: {n} error{'s' if n != 1 else ''} in the study file\n{lines}")


# ---------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    step: float | None = None
    log: bool = False


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Any, ...]
    # choice -> the parameters that exist only when this parameter takes that choice
    conditional: Mapping[Any, tuple[Param, ...]] = field(default_factory=dict)


Param = IntParam | FloatParam | CategoricalParam


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


# Options each sampler and pruner accepts, with their types. `seed` is the sampler's base seed.
SAMPLER_OPTIONS: Mapping[str, Mapping[str, type]] = {
    "tpe": {"seed": int, "n_startup_trials": int, "multivariate": bool, "group": bool,
            "constant_liar": bool},
    "random": {"seed": int},
    "qmc": {"seed": int, "qmc_type": str, "scramble": bool},
    "grid": {"seed": int},
    "cmaes": {"seed": int, "n_startup_trials": int, "sigma0": float},
    "gp": {"seed": int, "n_startup_trials": int, "deterministic_objective": bool},
}
PRUNER_OPTIONS: Mapping[str, Mapping[str, type]] = {
    "none": {},
    "median": {"n_startup_trials": int, "n_warmup_steps": int},
    "successive_halving": {"min_resource": int, "reduction_factor": int,
                           "min_early_stopping_rate": int},
    "hyperband": {"min_resource": int, "reduction_factor": int},
}


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
    def directions(self) -> list[str]:
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
        """Whether `fixed.precision` is "auto" (harness.precision chooses it)."""
        return self.fixed.get("precision") == hparams.AUTO_PRECISION

    def with_precision(self, precision: str) -> StudySpec:
        """This spec with `fixed.precision` set to `precision` (what "auto" resolved to)."""
        return dataclasses.replace(self, fixed={**self.fixed, "precision": precision})

    def search_names(self) -> list[str]:
        """Names of every searched parameter, conditional ones included, once each."""
        return list(dict.fromkeys(p.name for p in iter_params(self.search)))


def iter_params(params: Sequence[Param]) -> Iterator[Param]:
    """Every parameter of a space, depth first, conditional ones included."""
    for p in params:
        yield p
        if isinstance(p, CategoricalParam):
            for sub in p.conditional.values():
                yield from iter_params(sub)


# ---------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """The safe loader, reading `1e-4` as a float (YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; a syntax error becomes a SpecError with line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        kind = ("unsupported YAML tag (study files are read with the safe loader)"
                if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error")
        raise SpecError(source, [f"{kind}: {where}{exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"YAML error: {exc}"]) from None


# ---------------------------------------------------------------------------------------------
# Validation helpers: each appends to `errors` and returns a usable value.

_MISSING = object()


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _mapping(value: Any, path: str, errors: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return {}
    return value


def _reject_unknown(d: Mapping[str, Any], allowed: Sequence[str], path: str,
                    errors: list[str]) -> None:
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            errors.append(f"{where}: unknown key{_suggest(str(key), allowed)}; "
                          f"valid keys: {', '.join(allowed)}")


def _typed(value: Any, kind: type, path: str, errors: list[str]) -> Any:
    """`value` if it is a `kind` (an int passes as float, a bool never as a number), else
    _MISSING."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        errors.append(f"{path}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return _MISSING
    if kind is float and not math.isfinite(value):
        errors.append(f"{path}: must be finite, got {value}")
        return _MISSING
    return value


def _get(d: Mapping[str, Any], key: str, kind: type, default: Any, path: str,
         errors: list[str], *, optional: bool = False) -> Any:
    """d[key] checked as `kind` (or None when `optional`); the default when absent or invalid."""
    if key not in d:
        return default
    value = d[key]
    if value is None and optional:
        return None
    got = _typed(value, kind, f"{path}.{key}" if path else key, errors)
    return default if got is _MISSING else got


def _dataclass_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# ---------------------------------------------------------------------------------------------
# Sections

TOP_LEVEL = ("name", "data", "budget", "sampler", "pruner", "fixed", "search", "enqueue",
             "warm_start", "objective", "storage", "tracking", "finalize", "registry",
             "workers")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


_FIELD_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_NESTED = {"Patience": Patience}  # sections that sit inside another
_OWN_PARSER = {"PickRule"}  # fields read by a function of their own (left at their default)


def _parse_section(raw: Any, section: str, cls: type, errors: list[str]) -> Any:
    """A mapping section read into dataclass `cls`: each field checked against its annotated
    type (`X | None` may be null), missing ones at their defaults, unknown keys rejected."""
    d = _mapping(raw, section, errors)
    _reject_unknown(d, _dataclass_keys(cls), section, errors)
    default = cls()
    values = {}
    for f in dataclasses.fields(cls):
        kind, _, rest = f.type.partition(" | ")
        if kind in _OWN_PARSER:
            continue
        if kind in _NESTED:  # a section inside this one; absent or null: its default
            values[f.name] = (getattr(default, f.name) if d.get(f.name) is None else
                              _parse_section(d[f.name], f"{section}.{f.name}", _NESTED[kind],
                                             errors))
            continue
        values[f.name] = _get(d, f.name, _FIELD_TYPES[kind], getattr(default, f.name), section,
                              errors, optional=rest == "None")
    return cls(**values)


def _at_least(obj: Any, section: str, minimum: int, keys: Sequence[str],
              errors: list[str]) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < minimum:
            errors.append(f"{section}.{key}: must be >= {minimum}, got {value}")


def _parse_data(raw: Any, errors: list[str]) -> DataConfig:
    cfg: DataConfig = _parse_section(raw, "data", DataConfig, errors)
    fractions = {"train": cfg.train, "dev": cfg.dev, "test": cfg.test}
    for k, v in fractions.items():
        if not 0 < v < 1:
            errors.append(f"data.{k}: the split fraction must be in (0, 1), got {v}")
    total = sum(fractions.values())
    if abs(total - 1) > 1e-6:
        errors.append(f"data: split fractions train + dev + test must sum to 1, got {total:g}")
    return cfg


def _parse_budget(raw: Any, errors: list[str]) -> Budget:
    b: Budget = _parse_section(raw, "budget", Budget, errors)
    _at_least(b, "budget", 1, ("n_trials", "steps", "eval_every"), errors)
    if b.eval_every > b.steps >= 1:
        errors.append(f"budget.eval_every: {b.eval_every} is larger than budget.steps {b.steps}; "
                      "no evaluation would happen before the end")
    for key in ("timeout", "wall_time"):
        if (seconds := getattr(b, key)) is not None and seconds <= 0:
            errors.append(f"budget.{key}: must be > 0 seconds, got {seconds}")
    if b.checkpoint_every is not None and (b.checkpoint_every < 0 or b.eval_every >= 1 and
                                           b.checkpoint_every % b.eval_every):
        errors.append(f"budget.checkpoint_every: must be 0 (none) or a multiple of "
                      f"budget.eval_every ({b.eval_every}), got {b.checkpoint_every}")
    if b.patience is not None:
        _at_least(b.patience, "budget.patience", 1, ("trials",), errors)
        if b.patience.min_delta < 0:
            errors.append(f"budget.patience.min_delta: must be >= 0, got "
                          f"{b.patience.min_delta}")
    return b


def _parse_choice(raw: Any, section: str, table: Mapping[str, Mapping[str, type]],
                  default_type: str, errors: list[str]) -> tuple[str, dict[str, Any]]:
    """A `{type: ..., option: value}` section whose options depend on its type."""
    if isinstance(raw, str):
        raw = {"type": raw}
    d = _mapping(raw, section, errors)
    kind = d.get("type", default_type)
    if not isinstance(kind, str) or kind not in table:
        errors.append(f"{section}.type: unknown {section} {kind!r}{_suggest(str(kind), table)}; "
                      f"choose one of {', '.join(table)}")
        return default_type, {}
    options = {k: v for k, v in d.items() if k != "type"}
    _reject_unknown(options, list(table[kind]), section, errors)
    out = {}
    for key, kind_of in table[kind].items():
        if key in options:
            value = _get(options, key, kind_of, _MISSING, section, errors)
            if value is not _MISSING:
                out[key] = value
    return kind, out


def _parse_fixed(raw: Any, errors: list[str]) -> dict[str, Any]:
    d = _mapping(raw, "fixed", errors)
    out = {}
    for key, value in d.items():
        if key not in hparams.NAMES:
            errors.append(f"fixed.{key}: unknown hyperparameter{_suggest(str(key), hparams.NAMES)}")
        elif key == "precision" and value == hparams.AUTO_PRECISION:
            out[key] = value  # resolved by measurement before training (harness.precision)
        elif why := hparams.check_value(key, value):
            errors.append(f"fixed.{key}: {why}")
        else:
            out[key] = hparams.coerce(key, value)
    return out


_PARAM_KEYS = {
    "int": ("type", "low", "high", "step", "log"),
    "float": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices", "conditional"),
}


def _parse_param(name: str, raw: Any, path: str, errors: list[str]) -> Param | None:
    """One search parameter; None when it is too broken to use."""
    if name not in hparams.NAMES:
        errors.append(f"{path}: unknown hyperparameter{_suggest(name, hparams.NAMES)}")
        return None
    if isinstance(raw, list):  # shorthand: a list of choices
        raw = {"type": "categorical", "choices": raw}
    d = _mapping(raw, path, errors)
    if not d:
        errors.append(f"{path}: needs a type (int, float or categorical) and its bounds or choices")
        return None
    kind = d.get("type")
    if kind not in _PARAM_KEYS:
        errors.append(f"{path}.type: must be int, float or categorical, got {kind!r}")
        return None
    _reject_unknown(d, _PARAM_KEYS[kind], path, errors)
    if kind == "categorical":
        return _parse_categorical(name, d, path, errors)

    hp_type = hparams.TYPES[name]
    if kind == "int" and hp_type is not int or kind == "float" and hp_type is not float:
        errors.append(f"{path}.type: {name} is a {hp_type.__name__} hyperparameter, "
                      f"so its type must be {'int' if hp_type is int else 'float'}")
        return None
    num = int if kind == "int" else float
    n_before = len(errors)
    for key in ("low", "high"):
        if key not in d:
            errors.append(f"{path}.{key}: required for a {kind} parameter")
    low = _get(d, "low", num, None, path, errors)
    high = _get(d, "high", num, None, path, errors)
    log = _get(d, "log", bool, False, path, errors)
    step = _get(d, "step", num, 1 if num is int else None, path, errors, optional=True)
    if len(errors) > n_before or low is None or high is None:
        return None
    if low > high:
        errors.append(f"{path}: low ({low}) is greater than high ({high})")
    if log and low <= 0:
        errors.append(f"{path}: a log scale needs low > 0, got low = {low}")
    if step is not None and step <= 0:
        errors.append(f"{path}.step: must be > 0, got {step}")
    if log and step not in (None, 1):
        errors.append(f"{path}: step and log cannot be used together")
    for key, bound in (("low", low), ("high", high)):
        if why := hparams.check_value(name, bound):
            errors.append(f"{path}.{key}: {why}")
    if num is int:
        return IntParam(name, low, high, step=step or 1, log=log)
    return FloatParam(name, low, high, step=step, log=log)


def _parse_categorical(name: str, d: Mapping[str, Any], path: str,
                       errors: list[str]) -> CategoricalParam | None:
    choices = d.get("choices")
    if not isinstance(choices, list) or not choices:
        errors.append(f"{path}.choices: must be a non-empty list, got {choices!r}")
        return None
    ok = True
    seen: list[Any] = []
    for i, choice in enumerate(choices):
        if why := hparams.check_value(name, choice):
            errors.append(f"{path}.choices[{i}]: {why}")
            ok = False
        elif choice in seen:
            errors.append(f"{path}.choices[{i}]: {choice!r} is listed twice")
            ok = False
        seen.append(choice)
    conditional: dict[Any, tuple[Param, ...]] = {}
    for choice, sub in _mapping(d.get("conditional"), f"{path}.conditional", errors).items():
        sub_path = f"{path}.conditional.{choice}"
        if choice not in choices:
            errors.append(f"{sub_path}: {choice!r} is not one of the choices {choices}")
            ok = False
            continue
        conditional[choice] = _parse_space(sub, sub_path, errors)
    if not ok:
        return None
    coerced = tuple(hparams.coerce(name, c) for c in choices)
    return CategoricalParam(name, coerced, conditional)


def _parse_space(raw: Any, path: str, errors: list[str]) -> tuple[Param, ...]:
    d = _mapping(raw, path, errors)
    params = [_parse_param(str(k), v, f"{path}.{k}", errors) for k, v in d.items()]
    return tuple(p for p in params if p is not None)


def _level_names(params: Sequence[Param]) -> dict[str, Param]:
    """Names a space defines: its own, and those of its conditional branches. A name may recur
    in sibling branches of one choice (only one branch is ever active), with the same type."""
    names: dict[str, Param] = {}
    for p in params:
        names.setdefault(p.name, p)
        if isinstance(p, CategoricalParam):
            merged: dict[str, Param] = {}
            for branch in p.conditional.values():
                for name, q in _level_names(branch).items():
                    merged.setdefault(name, q)
            names.update({k: v for k, v in merged.items() if k not in names})
    return names


def _duplicates(params: Sequence[Param], path: str) -> list[str]:
    """Errors for names searched twice other than in sibling branches, or with two types."""
    errors = []
    seen: set[str] = set()
    for p in params:
        own = [p.name]
        if isinstance(p, CategoricalParam):
            kinds: dict[str, type] = {}
            for choice, branch in p.conditional.items():
                errors += _duplicates(branch, f"{path}.{p.name}.conditional.{choice}")
                for name, q in _level_names(branch).items():
                    if kinds.setdefault(name, type(q)) is not type(q):
                        errors.append(f"{path}.{p.name}.conditional: {name} has different types "
                                      "in different branches")
            own += list(kinds)
        for name in own:
            if name in seen:
                errors.append(f"{path}: {name} is searched more than once")
            seen.add(name)
    return errors


def _parse_finalize(raw: Any, objective: ObjectiveSpec, pareto_given: bool,
                    errors: list[str]) -> FinalizeSpec:
    d = dict(_mapping(raw, "finalize", errors))
    pick = _parse_pick(d.pop("pick", None), objective, pareto_given, errors)
    f: FinalizeSpec = dataclasses.replace(
        _parse_section(d, "finalize", FinalizeSpec, errors), pick=pick)
    _at_least(f, "finalize", 1, ("top_k", "seeds", "steps"), errors)
    _at_least(f, "finalize", 0, ("samples",), errors)
    if f.minutes is not None and f.minutes <= 0:
        errors.append(f"finalize.minutes: must be > 0, got {f.minutes}")
    return f


def _parse_pick(raw: Any, objective: ObjectiveSpec, pareto_given: bool,
                errors: list[str]) -> PickRule | None:
    """finalize.pick: `knee` or {max_<metric>: limit}; required in Pareto mode only.
    `pareto_given`: the file has objective.pareto (None here: it was invalid, and said so)."""
    metric = objective.pareto
    if metric is None:
        if raw is not None and not pareto_given:
            errors.append("finalize.pick: only a Pareto study (objective.pareto) picks from a "
                          "front; a study with one objective finalizes its best trials")
        return None
    allowed = f"`knee` or {{max_{metric}: LIMIT}}"
    if raw is None:
        errors.append(f"finalize.pick: a Pareto study needs an explicit rule to pick its final "
                      f"model from the front: {allowed}")
        return None
    if raw == "knee":
        return PickRule(metric)
    d = raw if isinstance(raw, dict) else {}
    limit = d.get(f"max_{metric}")
    if len(d) != 1 or isinstance(limit, bool) or not isinstance(limit, int | float) \
            or limit <= 0:
        errors.append(f"finalize.pick: must be {allowed} with LIMIT > 0, got {raw!r}")
        return None
    return PickRule(metric, float(limit))


def _parse_objective(raw: Any, errors: list[str]) -> ObjectiveSpec:
    d = _mapping(raw, "objective", errors)
    _reject_unknown(d, ["minimize", "pareto", "constraints"], "objective", errors)
    if d.get("minimize", "dev_loss") != "dev_loss":
        errors.append(f"objective.minimize: only dev_loss can be minimized, got "
                      f"{d['minimize']!r}")
    pareto = None
    if "pareto" in d:
        pair = d["pareto"]
        others = [m for m in pair if m != "dev_loss"] if isinstance(pair, list) else []
        if "minimize" in d:
            errors.append("objective: give either minimize (one objective) or pareto (two), "
                          "not both")
        if (not isinstance(pair, list) or len(pair) != 2 or "dev_loss" not in pair
                or len(others) != 1 or others[0] not in PARETO_METRICS):
            errors.append(f"objective.pareto: must be [dev_loss, X] with X one of "
                          f"{', '.join(PARETO_METRICS)}, got {pair!r}")
        else:
            pareto = others[0]
    constraints = []
    table = _mapping(d.get("constraints"), "objective.constraints", errors)
    _reject_unknown(table, list(CONSTRAINT_METRICS), "objective.constraints", errors)
    for metric, bounds in table.items():
        if metric not in CONSTRAINT_METRICS:
            continue
        path = f"objective.constraints.{metric}"
        bounds = _mapping(bounds, path, errors)
        _reject_unknown(bounds, CONSTRAINT_METRICS[metric], path, errors)
        for bound, value in bounds.items():
            if bound not in CONSTRAINT_METRICS[metric]:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                errors.append(f"{path}.{bound}: must be a number > 0, got {value!r}")
                continue
            constraints.append(Constraint(metric, bound, float(value)))
    return ObjectiveSpec(constraints=tuple(constraints), pareto=pareto)


def _parse_workers(raw: Any, errors: list[str]) -> WorkersSpec:
    w: WorkersSpec = _parse_section(raw, "workers", WorkersSpec, errors)
    _at_least(w, "workers", 1, ("count", "per_gpu", "threads", "heartbeat_s"), errors)
    _at_least(w, "workers", 0, ("max_retry",), errors)
    return w


def _parse_enqueue(raw: Any, search: Sequence[Param],
                   errors: list[str]) -> tuple[dict[str, Any], ...]:
    """Configs to run first: each a mapping of searched parameters to values their space
    holds (a value outside every range or choice of its parameter is an error)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"enqueue: expected a list of configs, got {type(raw).__name__}")
        return ()
    spaces: dict[str, list[Param]] = {}
    for p in iter_params(search):
        spaces.setdefault(p.name, []).append(p)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):  # a named config, cut to the space
            if item not in NAMED_CONFIGS:
                errors.append(f"enqueue[{i}]: unknown config name {item!r}; named configs: "
                              f"{', '.join(NAMED_CONFIGS)}")
                continue
            out.append(_cut_to_space(NAMED_CONFIGS[item], search))
            continue
        config = _mapping(item, f"enqueue[{i}]", errors)
        _reject_unknown(config, list(spaces), f"enqueue[{i}]", errors)
        for name, value in config.items():
            if name not in spaces:
                continue
            if why := hparams.check_value(name, value):
                errors.append(f"enqueue[{i}].{name}: {why}")
            elif not any(_holds(p, hparams.coerce(name, value)) for p in spaces[name]):
                errors.append(f"enqueue[{i}].{name}: {value!r} is outside its searched space")
        out.append({k: hparams.coerce(k, v) for k, v in config.items()
                    if k in spaces and not hparams.check_value(k, v)})
    return tuple(out)


def _cut_to_space(config: Mapping[str, Any], space: Sequence[Param]) -> dict[str, Any]:
    """The values of `config` that the searched space can hold, conditional ones only under
    the branch `config` chooses (the rest is sampled)."""
    out: dict[str, Any] = {}
    for p in space:
        value = config.get(p.name)
        holds = p.name in config and _holds(p, value)
        if holds:
            out[p.name] = value
        if isinstance(p, CategoricalParam):  # a sampled choice may take any branch
            for choice, sub in p.conditional.items():
                if not holds or choice == value:
                    out.update(_cut_to_space(config, sub))
    return out


def _holds(p: Param, value: Any) -> bool:
    if isinstance(p, CategoricalParam):
        return value in p.choices
    return p.low <= value <= p.high


def validate(raw: Any, source: str, default_name: str) -> StudySpec:
    """Check a parsed study file; raise SpecError with every problem, or return the spec."""
    errors: list[str] = []
    top = _mapping(raw, "(top level)", errors)
    _reject_unknown(top, TOP_LEVEL, "", errors)

    name = top.get("name", default_name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        errors.append(f"name: {name!r} is not a valid study name: use letters, digits, '.', '_' "
                      "and '-' (it names files and the MLflow experiment)")
        name = default_name
    data = _parse_data(top.get("data"), errors)
    budget = _parse_budget(top.get("budget"), errors)
    sampler_type, sampler_opts = _parse_choice(top.get("sampler"), "sampler", SAMPLER_OPTIONS,
                                               "tpe", errors)
    sampler_opts.setdefault("seed", 0)
    objective = _parse_objective(top.get("objective"), errors)
    # Pareto mode prunes nothing (a pruner named anyway is reported off when the study runs).
    pruner_type, pruner_opts = _parse_choice(top.get("pruner"), "pruner", PRUNER_OPTIONS,
                                             "none" if objective.pareto else "median", errors)
    fixed = _parse_fixed(top.get("fixed"), errors)
    search = _parse_space(top.get("search"), "search", errors)
    storage = _get(top, "storage", str, None, "", errors, optional=True)
    tracking = _parse_section(top.get("tracking"), "tracking", TrackingSpec, errors)
    pareto_given = isinstance(top.get("objective"), dict) and "pareto" in top["objective"]
    finalize = _parse_finalize(top.get("finalize"), objective, pareto_given, errors)
    workers = _parse_workers(top.get("workers"), errors)
    registry = _parse_section(top.get("registry"), "registry", RegistrySpec, errors)

    errors += _duplicates(search, "search")
    enqueue = _parse_enqueue(top.get("enqueue"), search, errors)
    warm_start = None
    if top.get("warm_start") is not None:
        warm_start = _parse_section(top["warm_start"], "warm_start", WarmStart, errors)
        if not warm_start.study:
            errors.append("warm_start.study: name the earlier study (its file or its name)")
        _at_least(warm_start, "warm_start", 1, ("top",), errors)
    if finalize.fill and not finalize.ensemble:
        errors.append("finalize.fill: needs finalize.ensemble: true (the models it trains "
                      "join the final ensemble)")
    if finalize.fill and budget.wall_time is None:
        errors.append("finalize.fill: needs budget.wall_time (it fills the time the search "
                      "and the retrainings leave of it)")
    for name in {p.name for p in iter_params(search)} & set(fixed):
        errors.append(f"search.{name}: also set in fixed; a parameter is fixed or searched")
    if objective.pareto and sampler_type == "cmaes":
        errors.append("sampler: cmaes optimizes one objective; a Pareto study needs tpe (its "
                      "multi-objective form), random, qmc or grid")
    if sampler_type == "grid":
        for p in iter_params(search):
            if isinstance(p, FloatParam) and p.step is None:
                errors.append(f"search.{p.name}: the grid sampler needs a step for float ranges")
            if isinstance(p, CategoricalParam) and p.conditional:
                errors.append(f"search.{p.name}: the grid sampler does not support conditional "
                              "parameters")
    if errors:
        raise SpecError(source, errors)
    return StudySpec(
        name=name, data=data, budget=budget,
        sampler=SamplerSpec(sampler_type, sampler_opts),
        pruner=PrunerSpec(pruner_type, pruner_opts),
        fixed=fixed, search=search, storage=storage, tracking=tracking, finalize=finalize,
        workers=workers, registry=registry, objective=objective, enqueue=enqueue,
        warm_start=warm_start,
        source=source, raw=top,
    )


# ---------------------------------------------------------------------------------------------
# Overrides and loading


def parse_assignments(items: Sequence[str], flag: str, source: str) -> dict[str, Any]:
    """`KEY=VALUE` strings -> {KEY: value}, each value parsed as YAML (`1e-4` is a float)."""
    errors: list[str] = []
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            errors.append(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} budget.n_trials=4")
            continue
        try:
            out[key] = yaml.load(text, Loader=_Loader) if text.strip() else None  # noqa: S506
        except yaml.YAMLError:
            out[key] = text
    if errors:
        raise SpecError(source, errors)
    return out


def apply_overrides(raw: Mapping[str, Any], values: Mapping[str, Any],
                    source: str) -> dict[str, Any]:
    """A copy of the study mapping with `{"key.path": value}` set (e.g. from --set)."""
    errors: list[str] = []
    out = _deepcopy_mapping(raw)
    for key, value in values.items():
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                errors.append(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
                break
        else:
            node[parts[-1]] = value
    if errors:
        raise SpecError(source, errors)
    return out


def _deepcopy_mapping(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_mapping(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_spec(path: str | Path, overrides: Sequence[str] = (),
              values: Mapping[str, Any] | None = None) -> StudySpec:
    """Read, override and validate a study file. Raises SpecError (all problems at once).

    `overrides` are `key.path=value` strings (values parsed as YAML); `values` are already
    parsed, e.g. {"storage": url} from a command-line flag.
    """
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, ["study file not found"]) from None
    except IsADirectoryError:
        raise SpecError(source, ["this is a directory, not a study file"]) from None
    except UnicodeDecodeError:
        raise SpecError(source, ["the study file is not UTF-8 text"]) from None
    except OSError as exc:
        raise SpecError(source, [f"cannot read the study file: {exc.strerror}"]) from None
    raw = parse_yaml(text, source)
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(source, [f"a study file is a mapping of keys, got {type(raw).__name__}"])
    assignments = {**parse_assignments(overrides, "--set", source), **(values or {})}
    raw = apply_overrides(raw or {}, assignments, source)
    return validate(raw, source, default_name=p.stem)
