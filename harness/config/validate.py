"""Validation: a parsed study file -> a StudySpec, or a SpecError listing every problem.

Each section is read by its own function below (the search space by `harness.config.params`),
unknown keys are rejected with the closest valid one suggested, and checks that span sections
(fill needs an ensemble and a wall time, a sampler that cannot serve the space) come last.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from harness.config import hparams
from harness.config.checks import (
    MISSING,
    at_least,
    get,
    mapping,
    parse_section,
    reject_unknown,
    suggest,
)
from harness.config.choices import PRUNERS, SAMPLERS, Choice
from harness.config.params import duplicates, parse_space
from harness.config.schema import (
    CONSTRAINT_METRICS,
    NAMED_CONFIGS,
    PARETO_METRICS,
    Budget,
    Constraint,
    DataConfig,
    FinalizeSpec,
    ObjectiveSpec,
    PickRule,
    PrunerSpec,
    RegistrySpec,
    SamplerSpec,
    StudySpec,
    TrackingSpec,
    WarmStart,
    WorkersSpec,
)
from harness.config.space import (
    CategoricalParam,
    FloatParam,
    Param,
    cut_to_space,
    holds,
    iter_params,
)
from harness.errors import SpecError

MAX_SAMPLER_SEED = 2**31 - 1
TOP_LEVEL = ("name", "data", "budget", "sampler", "pruner", "fixed", "search", "enqueue",
             "warm_start", "objective", "storage", "tracking", "finalize", "registry",
             "workers")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _parse_data(raw: Any, errors: list[str]) -> DataConfig:
    cfg: DataConfig = parse_section(raw, "data", DataConfig, errors)
    fractions = {"train": cfg.train, "dev": cfg.dev, "test": cfg.test}
    for k, v in fractions.items():
        if not 0 < v < 1:
            errors.append(f"data.{k}: the split fraction must be in (0, 1), got {v}")
    total = sum(fractions.values())
    if abs(total - 1) > 1e-6:
        errors.append(f"data: split fractions train + dev + test must sum to 1, got {total:g}")
    return cfg


def _parse_budget(raw: Any, errors: list[str]) -> Budget:
    b: Budget = parse_section(raw, "budget", Budget, errors)
    at_least(b, "budget", 1, ("n_trials", "steps", "eval_every"), errors)
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
        at_least(b.patience, "budget.patience", 1, ("trials",), errors)
        if b.patience.min_delta < 0:
            errors.append(f"budget.patience.min_delta: must be >= 0, got "
                          f"{b.patience.min_delta}")
    return b


def _parse_choice(raw: Any, section: str, table: Mapping[str, Choice], default_type: str,
                  errors: list[str]) -> tuple[str, dict[str, Any]]:
    """A `{type: ..., option: value}` section whose options depend on its type."""
    if isinstance(raw, str):
        raw = {"type": raw}
    d = mapping(raw, section, errors)
    kind = d.get("type", default_type)
    if not isinstance(kind, str) or kind not in table:
        errors.append(f"{section}.type: unknown {section} {kind!r}"
                      f"{suggest(str(kind), list(table))}; choose one of {', '.join(table)}")
        return default_type, {}
    options = {k: v for k, v in d.items() if k != "type"}
    reject_unknown(options, list(table[kind].options), section, errors)
    out = {}
    for key, kind_of in table[kind].options.items():
        if key in options:
            value = get(options, key, kind_of, MISSING, section, errors)
            if value is not MISSING:
                out[key] = value
    return kind, out


def _parse_fixed(raw: Any, errors: list[str]) -> dict[str, Any]:
    d = mapping(raw, "fixed", errors)
    out = {}
    for key, value in d.items():
        if key not in hparams.NAMES:
            errors.append(f"fixed.{key}: unknown hyperparameter{suggest(str(key), hparams.NAMES)}")
        elif key == "precision" and value == hparams.AUTO_PRECISION:
            out[key] = value  # resolved by measurement before training (harness.training.precision)
        elif why := hparams.check_value(key, value):
            errors.append(f"fixed.{key}: {why}")
        else:
            out[key] = hparams.coerce(key, value)
    return out


def _parse_finalize(raw: Any, objective: ObjectiveSpec, pareto_given: bool,
                    errors: list[str]) -> FinalizeSpec:
    d = dict(mapping(raw, "finalize", errors))
    pick = _parse_pick(d.pop("pick", None), objective, pareto_given, errors)
    f: FinalizeSpec = dataclasses.replace(
        parse_section(d, "finalize", FinalizeSpec, errors), pick=pick)
    at_least(f, "finalize", 1, ("top_k", "seeds", "steps"), errors)
    at_least(f, "finalize", 0, ("samples",), errors)
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
    d = mapping(raw, "objective", errors)
    reject_unknown(d, ["minimize", "pareto", "constraints"], "objective", errors)
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
    table = mapping(d.get("constraints"), "objective.constraints", errors)
    reject_unknown(table, list(CONSTRAINT_METRICS), "objective.constraints", errors)
    for metric, bounds in table.items():
        if metric not in CONSTRAINT_METRICS:
            continue
        path = f"objective.constraints.{metric}"
        bounds = mapping(bounds, path, errors)
        reject_unknown(bounds, CONSTRAINT_METRICS[metric], path, errors)
        for bound, value in bounds.items():
            if bound not in CONSTRAINT_METRICS[metric]:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                errors.append(f"{path}.{bound}: must be a number > 0, got {value!r}")
                continue
            constraints.append(Constraint(metric, bound, float(value)))
    return ObjectiveSpec(constraints=tuple(constraints), pareto=pareto)


def _parse_workers(raw: Any, errors: list[str]) -> WorkersSpec:
    w: WorkersSpec = parse_section(raw, "workers", WorkersSpec, errors)
    at_least(w, "workers", 1, ("count", "per_gpu", "threads", "heartbeat_s"), errors)
    at_least(w, "workers", 0, ("max_retry",), errors)
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
            out.append(cut_to_space(NAMED_CONFIGS[item], search))
            continue
        config = mapping(item, f"enqueue[{i}]", errors)
        reject_unknown(config, list(spaces), f"enqueue[{i}]", errors)
        for name, value in config.items():
            if name not in spaces:
                continue
            if why := hparams.check_value(name, value):
                errors.append(f"enqueue[{i}].{name}: {why}")
            elif not any(holds(p, hparams.coerce(name, value)) for p in spaces[name]):
                errors.append(f"enqueue[{i}].{name}: {value!r} is outside its searched space")
        out.append({k: hparams.coerce(k, v) for k, v in config.items()
                    if k in spaces and not hparams.check_value(k, v)})
    return tuple(out)


def validate(raw: Any, source: str, default_name: str) -> StudySpec:
    """Check a parsed study file; raise SpecError with every problem, or return the spec.
    Sections are read in the order a study file lists them, so are their errors."""
    errors: list[str] = []
    top = mapping(raw, "(top level)", errors)
    reject_unknown(top, TOP_LEVEL, "", errors)
    name = _parse_name(top.get("name", default_name), default_name, errors)
    data = _parse_data(top.get("data"), errors)
    budget = _parse_budget(top.get("budget"), errors)
    sampler_type, sampler_opts = _parse_choice(top.get("sampler"), "sampler", SAMPLERS, "tpe",
                                               errors)
    if not 0 <= sampler_opts.get("seed", 0) <= MAX_SAMPLER_SEED:
        errors.append(f"sampler.seed: must be in 0..{MAX_SAMPLER_SEED} (numpy's generators "
                      f"take 32-bit seeds, and each worker adds its own offset), got "
                      f"{sampler_opts['seed']}")
        sampler_opts.pop("seed")
    objective = _parse_objective(top.get("objective"), errors)
    # Pareto mode prunes nothing (a pruner named anyway is reported off when the study runs).
    pruner = PrunerSpec(*_parse_choice(top.get("pruner"), "pruner", PRUNERS,
                                       "none" if objective.pareto else "median", errors))
    fixed = _parse_fixed(top.get("fixed"), errors)
    search = parse_space(top.get("search"), "search", errors)
    storage = get(top, "storage", str, None, "", errors, optional=True)
    tracking = parse_section(top.get("tracking"), "tracking", TrackingSpec, errors)
    pareto_given = isinstance(top.get("objective"), dict) and "pareto" in top["objective"]
    finalize = _parse_finalize(top.get("finalize"), objective, pareto_given, errors)
    workers = _parse_workers(top.get("workers"), errors)
    registry = parse_section(top.get("registry"), "registry", RegistrySpec, errors)
    errors += duplicates(search, "search")
    spec = StudySpec(
        name=name, data=data, budget=budget,
        sampler=SamplerSpec(sampler_type, {"seed": 0, **sampler_opts}), pruner=pruner,
        fixed=fixed, search=search, storage=storage, tracking=tracking, finalize=finalize,
        workers=workers, registry=registry, objective=objective,
        enqueue=_parse_enqueue(top.get("enqueue"), search, errors),
        warm_start=_parse_warm_start(top.get("warm_start"), errors),
        source=source, raw=top)
    errors += _across_sections(spec)
    if errors:
        raise SpecError(source, errors)
    return spec


def _parse_name(name: Any, default_name: str, errors: list[str]) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        errors.append(f"name: {name!r} is not a valid study name: use letters, digits, '.', '_' "
                      "and '-' (it names files and the MLflow experiment)")
        return default_name
    return name


def _parse_warm_start(raw: Any, errors: list[str]) -> WarmStart | None:
    if raw is None:
        return None
    warm_start: WarmStart = parse_section(raw, "warm_start", WarmStart, errors)
    if not warm_start.study:
        errors.append("warm_start.study: name the earlier study (its file or its name)")
    at_least(warm_start, "warm_start", 1, ("top",), errors)
    return warm_start


def _across_sections(spec: StudySpec) -> list[str]:
    """What no one section can tell: settings of several sections that cannot work together."""
    errors = []
    if spec.finalize.fill and not spec.finalize.ensemble:
        errors.append("finalize.fill: needs finalize.ensemble: true (the models it trains "
                      "join the final ensemble)")
    if spec.finalize.fill and spec.budget.wall_time is None:
        errors.append("finalize.fill: needs budget.wall_time (it fills the time the search "
                      "and the retrainings leave of it)")
    for name in sorted({p.name for p in iter_params(spec.search)} & set(spec.fixed)):
        errors.append(f"search.{name}: also set in fixed; a parameter is fixed or searched")
    if spec.objective.pareto and not SAMPLERS[spec.sampler.type].multi_objective:
        able = [name for name, c in SAMPLERS.items() if c.multi_objective]
        errors.append(f"sampler: {spec.sampler.type} optimizes one objective; a Pareto study "
                      f"needs tpe (its multi-objective form), {', '.join(able[1:-1])} or "
                      f"{able[-1]}")
    if spec.sampler.type == "grid":
        for p in iter_params(spec.search):
            if isinstance(p, FloatParam) and p.step is None:
                errors.append(f"search.{p.name}: the grid sampler needs a step for float ranges")
            if isinstance(p, CategoricalParam) and p.conditional:
                errors.append(f"search.{p.name}: the grid sampler does not support conditional "
                              "parameters")
    return errors
