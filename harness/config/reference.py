"""The study file's reference: every key the validator accepts, with its type, its default and
what it does. The keys, types and defaults are read from the schema itself (its dataclasses,
the sampler and pruner registry, the hyperparameters); what each does is written once, here,
in MEANINGS. `rows()` fails for a key without a meaning or a meaning without a key, so the
reference cannot drift from the schema (the docs are built from it and a test calls it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from harness.config import hparams
from harness.config.choices import PRUNERS, SAMPLERS
from harness.config.params import PARAM_KEYS
from harness.config.schema import (
    CONSTRAINT_METRICS,
    PARETO_METRICS,
    Budget,
    DataConfig,
    FinalizeSpec,
    Patience,
    RegistrySpec,
    TrackingSpec,
    WarmStart,
    WorkersSpec,
)
from harness.config.validate import TOP_LEVEL

MEANINGS: Mapping[str, str] = {
    "name": "The study's name: it names the Optuna study, the MLflow experiment and the "
            "folder of its outputs. Default: the file's name without `.yaml`.",
    "data": "Where the words come from and how they are split.",
    "data.path": "A UTF-8 file with one word per line; null: the bundled names.txt.",
    "data.train": "Share of the words in the train split.",
    "data.dev": "Share of the words in the dev split (the search's yardstick).",
    "data.test": "Share of the words in the test split, read once, by finalize.",
    "data.seed": "Seed of the shuffle before the split (42: the lectures' split).",
    "budget": "How much the search may spend.",
    "budget.n_trials": "Trials of the study in all, across workers and resumes.",
    "budget.steps": "Optimizer steps per trial.",
    "budget.eval_every": "Steps between dev evaluations (and pruning decisions).",
    "budget.timeout": "Seconds after which no new trial starts (from the latest run-study).",
    "budget.wall_time": "Seconds for the whole run-study, finalize included: a new trial "
                        "starts only while it and the final model still fit.",
    "budget.patience": "Stop starting trials when the best dev loss stopped improving.",
    "budget.patience.trials": "Complete trials to wait for an improvement.",
    "budget.patience.min_delta": "The smallest improvement that counts.",
    "budget.checkpoint_every": "Steps between trial checkpoints (a multiple of eval_every); "
                               "null: at every evaluation; 0: none.",
    "budget.keep_checkpoints": "Keep finished trials' checkpoints (else deleted).",
    "sampler": "How trials are proposed: a type and its options (a string names the type).",
    "sampler.type": "The sampler: " + ", ".join(SAMPLERS) + ".",
    "sampler.seed": "The sampler's base seed; each worker adds its own offset.",
    "sampler.n_startup_trials": "Trials sampled at random before the model takes over.",
    "sampler.multivariate": "tpe: model the parameters jointly (default true).",
    "sampler.group": "tpe: model each conditional branch apart (default: with conditional "
                     "parameters).",
    "sampler.constant_liar": "tpe: count running trials as bad, so parallel workers spread.",
    "sampler.qmc_type": "qmc: the sequence, `sobol` or `halton`.",
    "sampler.scramble": "qmc: scramble the sequence.",
    "sampler.sigma0": "cmaes: the initial step size.",
    "sampler.deterministic_objective": "gp: treat the dev loss as noise-free.",
    "pruner": "How weak trials are stopped early: a type and its options.",
    "pruner.type": "The pruner: " + ", ".join(PRUNERS) + " (off in Pareto mode).",
    "pruner.n_startup_trials": "median: trials that finish before any is pruned.",
    "pruner.n_warmup_steps": "median: steps of a trial before it can be pruned.",
    "pruner.min_resource": "successive_halving, hyperband: steps of the first rung "
                           "(default: eval_every).",
    "pruner.reduction_factor": "successive_halving, hyperband: the share of trials each rung "
                               "keeps is 1 over this.",
    "pruner.min_early_stopping_rate": "successive_halving: rungs skipped at the start.",
    "fixed": "Hyperparameters held constant (any of those below); the rest keep their "
             "defaults. `precision: auto` measures the faster precision here.",
    "search": "The space: each hyperparameter searched, as a range or a list of choices.",
    "search.*.type": "`int`, `float` or `categorical` (a plain list is a categorical).",
    "search.*.low": "int, float: the smallest value.",
    "search.*.high": "int, float: the largest value.",
    "search.*.step": "int, float: the grid of values (floats need one for the grid sampler).",
    "search.*.log": "int, float: sample on a log scale.",
    "search.*.choices": "categorical: the values.",
    "search.*.conditional": "categorical: parameters that exist only under one choice "
                            "(choice -> a space of its own).",
    "enqueue": "Configs run first, once each, when the study is created: partial mappings "
               "(the rest is sampled) or a name (`lecture`).",
    "warm_start": "Start with an earlier study's best complete trials as finished trials.",
    "warm_start.study": "The earlier study: its file, or its name in this storage.",
    "warm_start.top": "Only its best `top` complete trials (null: all).",
    "objective": "What the search minimizes: dev loss alone, within constraints, or a "
                 "Pareto front.",
    "objective.minimize": "The one objective: `dev_loss`.",
    "objective.pareto": "Two objectives, both minimized: `[dev_loss, X]`, X one of "
                        + ", ".join(PARETO_METRICS) + ".",
    "objective.constraints": "Bounds on what a trial measures; a trial outside one is "
                             "infeasible.",
    "objective.constraints.n_params.max": "At most this many parameters (known before "
                                          "training: such a config is never trained).",
    "objective.constraints.steps_per_sec.min": "At least this many training steps a second.",
    "objective.constraints.ms_per_name.max": "At most this many milliseconds to sample one "
                                             "name.",
    "storage": "The Optuna storage: a database URL (postgresql://...); null: the journal file "
               "under the results folder.",
    "tracking": "Where MLflow records the runs.",
    "tracking.uri": "An MLflow tracking server or database; null: sqlite under the results "
                    "folder.",
    "tracking.experiment": "The MLflow experiment (null: the study's name).",
    "finalize": "The final model: retrain the best trials, choose on dev, read test once.",
    "finalize.enabled": "run-study ends by finalizing (unless --no-finalize).",
    "finalize.top_k": "Candidates: the best complete trials with distinct configs.",
    "finalize.seeds": "Each candidate is retrained on seeds 1..seeds.",
    "finalize.steps": "Steps per retraining (null: budget.steps).",
    "finalize.minutes": "Minutes per retraining: steps from its trial's measured speed.",
    "finalize.samples": "Names sampled from the final model and recorded.",
    "finalize.ensemble": "The final model averages the chosen config's models over all seeds "
                         "and its trial's own.",
    "finalize.pick": "Pareto mode, required there: `knee`, or `{max_METRIC: LIMIT}`.",
    "finalize.fill": "With ensemble and wall_time: the time left trains more seeds, each kept "
                     "if it lowers the ensemble's dev loss.",
    "finalize.mix_ngram": "The final model mixes the network with the Kneser-Ney n-gram best "
                          "on dev, its weight chosen on dev.",
    "registry": "The final model in MLflow's Model Registry.",
    "registry.enabled": "Register it (alias `champion`).",
    "registry.name": "The registered model's name (null: the study's).",
    "workers": "Processes that run trials.",
    "workers.count": "Local worker processes (--workers overrides it).",
    "workers.per_gpu": "With a CUDA device: workers on each GPU.",
    "workers.threads": "Torch threads per worker (null: cores divided among the workers).",
    "workers.max_retry": "Times a trial lost with its worker is re-queued.",
    "workers.heartbeat_s": "Database storages: seconds between heartbeats (a trial is stale "
                           "after two missed).",
    "hparams.context_length": "Characters of context the model sees.",
    "hparams.embedding_dim": "Size of each character's embedding.",
    "hparams.hidden_width": "Units of each tanh hidden layer.",
    "hparams.hidden_layers": "Number of tanh hidden layers.",
    "hparams.dropout": "Dropout after each hidden layer, in [0, 1).",
    "hparams.batch_size": "Examples per optimizer step.",
    "hparams.optimizer": "One of " + ", ".join(hparams.OPTIMIZERS) + ".",
    "hparams.lr": "The peak learning rate.",
    "hparams.lr_schedule": "One of " + ", ".join(hparams.LR_SCHEDULES) + ".",
    "hparams.lr_step_factor": "step schedule: lr is multiplied by this ...",
    "hparams.lr_step_at": "step schedule: ... from this share of the steps on.",
    "hparams.warmup_frac": "cosine schedule: share of the steps of linear warmup.",
    "hparams.lr_min_frac": "cosine schedule: the final lr as a share of lr.",
    "hparams.weight_decay": "L2 (sgd) or decoupled (adamw) weight decay.",
    "hparams.ema_decay": "> 0: evaluate and keep a moving average of the weights.",
    "hparams.precision": "The training step's products: fp32 or bf16 (auto in fixed: the "
                         "faster here, measured).",
    "hparams.seed": "Seeds initialization and batch order.",
}


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    meaning: str


_SECTIONS: Mapping[str, type] = {
    "data": DataConfig, "budget": Budget, "budget.patience": Patience,
    "tracking": TrackingSpec, "finalize": FinalizeSpec, "registry": RegistrySpec,
    "workers": WorkersSpec, "warm_start": WarmStart}
_KINDS = {"name": "str", "storage": "str or null", "fixed": "mapping", "search": "mapping",
          "enqueue": "list", "sampler": "mapping or str", "pruner": "mapping or str",
          "objective": "mapping"}


def _keys() -> Iterator[tuple[str, str, Any]]:
    """(key, type, default) of every key the validator accepts."""
    for top in TOP_LEVEL:
        yield top, _KINDS.get(top, "mapping"), _default(top)
        if top in _SECTIONS:
            yield from _fields(top, _SECTIONS[top])
    for name, table in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        yield f"{name}.type", "str", "tpe" if name == "sampler" else "median"
        options = {k: t for c in table.values() for k, t in c.options.items()}
        yield from ((f"{name}.{k}", t.__name__, "") for k, t in options.items())
    yield "objective.minimize", "str", "dev_loss"
    yield "objective.pareto", "list", "null"
    yield "objective.constraints", "mapping", "none"
    for metric, bounds in CONSTRAINT_METRICS.items():
        yield from ((f"objective.constraints.{metric}.{b}", "number", "") for b in bounds)
    for key in dict.fromkeys(k for keys in PARAM_KEYS.values() for k in keys):
        yield f"search.*.{key}", "", ""
    for f in dataclasses.fields(hparams.HParams):
        yield f"hparams.{f.name}", str(f.type), repr(f.default)


def _fields(prefix: str, cls: type) -> Iterator[tuple[str, str, Any]]:
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        kind = str(f.type).replace("None", "null").replace(" | ", " or ").replace(
            "PickRule", "str or mapping")
        yield key, "mapping or null" if key in _SECTIONS else kind, _show(f.default)
        if key in _SECTIONS:
            yield from _fields(key, _SECTIONS[key])


def _default(top: str) -> str:
    return {"name": "the file's stem", "storage": "null", "enqueue": "none"}.get(top, "")


def _show(value: Any) -> str:
    return "null" if value is None else repr(value).lower() if isinstance(value, bool) \
        else repr(value) if isinstance(value, str) else str(value)


def rows() -> list[Row]:
    """The reference, a row per key. Raises KeyError naming the keys without a meaning, and
    the meanings without a key."""
    found = list(_keys())
    keys = {k for k, _, _ in found}
    missing = [k for k in keys if k not in MEANINGS]
    stale = [k for k in MEANINGS if k not in keys]
    if missing or stale:
        raise KeyError(f"study-file keys without a meaning: {sorted(missing)}; meanings "
                       f"without a key: {sorted(stale)}")
    return [Row(k, t, str(d), MEANINGS[k]) for k, t, d in found]


def markdown() -> str:
    """The reference as Markdown tables: the study file's keys, then the hyperparameters."""
    keys = [r for r in rows() if not r.key.startswith("hparams.")]
    hps = [r for r in rows() if r.key.startswith("hparams.")]
    lines = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    lines += [f"| `{r.key}` | {r.type} | {r.default} | {r.meaning} |" for r in keys]
    lines += ["", "Hyperparameters, in `fixed:` and `search:` (defaults: the lecture's config):",
              "", "| hyperparameter | type | default | what it does |",
              "| --- | --- | --- | --- |"]
    lines += [f"| `{r.key.removeprefix('hparams.')}` | {r.type} | {r.default} | "
              f"{r.meaning} |" for r in hps]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- reference: begin -->", "<!-- reference: end -->"


def page(text: str) -> str:
    """`text` (the docs page) with the part between its markers made the reference anew."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown()}{END}{tail}"


if __name__ == "__main__":  # python -m harness.config.reference docs/study-file.md
    import sys
    from pathlib import Path

    target = Path(sys.argv[1])
    target.write_text(page(target.read_text(encoding="utf-8")), encoding="utf-8")
