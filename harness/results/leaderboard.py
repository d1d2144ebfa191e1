"""Trials -> a ranked pandas DataFrame -> CSV.

Complete trials come first, ranked by best dev loss (those outside the objective's constraints
after the feasible ones, unranked: `feasible` False; in Pareto mode the front before the rest,
`pareto` True); pruned, failed and running trials follow,
with their best or last dev loss and the failure reason. Reference models (count-based n-grams,
harness.training.baseline) can stand among the complete trials as unranked REFERENCE rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from harness.config import hparams
from harness.search import pareto
from harness.search.records import TrialRecord, search_records

_STATE_ORDER = {"COMPLETE": 0, "REFERENCE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3,
                "WAITING": 4}

FIRST_COLUMNS = ["rank", "trial", "state", "feasible", "pareto", "model", "best_dev_loss",
                 "best_step", "last_dev_loss"]
LAST_COLUMNS = ["n_params", "steps", "steps_per_sec", "ms_per_name", "duration_s", "worker",
                "mlflow_run_id", "fail_reason", "resumed_from_step", "warm_from", "threads",
                "commit"]
COLUMNS = FIRST_COLUMNS + list(hparams.NAMES) + LAST_COLUMNS


def _row(r: TrialRecord, on_front: set[int] | None) -> dict[str, Any]:
    last_dev = r.intermediate[max(r.intermediate)] if r.intermediate else None
    best_step = r.best_step
    if best_step is None and r.intermediate:
        best_step = min(r.intermediate, key=r.intermediate.__getitem__)
    return {
        "trial": r.number,
        "state": r.state.name,
        "feasible": r.feasible,
        "pareto": None if on_front is None else r.number in on_front,
        "model": "mlp",
        "best_dev_loss": r.best,
        "best_step": best_step,
        "last_dev_loss": last_dev,
        # A value that has no effect in the trial's config is left empty (a step schedule's
        # factor on a cosine trial, say).
        **{name: r.hparams.get(name) if hparams.applies(name, r.hparams) else None
           for name in hparams.NAMES},
        "n_params": r.n_params,
        "steps": r.steps,
        "steps_per_sec": r.steps_per_sec,
        "ms_per_name": r.ms_per_name,
        "duration_s": r.duration_s,
        "worker": r.worker,
        "mlflow_run_id": r.mlflow_run_id,
        "fail_reason": r.fail_reason,
        "resumed_from_step": r.resumed_from_step,
        "warm_from": r.warm_from,
        "threads": r.threads,
        "commit": r.commit,
    }


def build(study: optuna.Study, references: Sequence[Any] = (),
          pareto_metric: str | None = None) -> pd.DataFrame:
    """One row per trial, complete trials first by best dev loss, then the others.

    `references` (harness.training.baseline.BaselineResult) are placed among the complete trials by
    their dev loss, unranked, with state REFERENCE. With `pareto_metric` (Pareto mode) the
    front of dev loss against it comes first, marked in the `pareto` column.
    """
    recs = search_records(study)
    on_front = ({r.number for r in pareto.front(recs, pareto_metric)}
                if pareto_metric else None)
    rows = [_row(r, on_front) for r in recs]
    rows += [{"state": "REFERENCE", "model": r.model, "best_dev_loss": r.dev_loss}
             for r in references]
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    order = df["state"].map(_STATE_ORDER).fillna(len(_STATE_ORDER))
    # Trials outside the objective's constraints rank after every feasible one of their state.
    infeasible = df["feasible"].eq(False)
    off_front = df["pareto"].eq(False)  # all False without a front: no effect
    loss = df["best_dev_loss"].astype(float).fillna(math.inf)
    df = (df.assign(_order=order, _infeasible=infeasible, _off=off_front, _loss=loss)
            .sort_values(["_order", "_infeasible", "_off", "_loss", "trial"], kind="stable")
            .drop(columns=["_order", "_infeasible", "_off", "_loss"])
            .reset_index(drop=True))
    complete = (df["state"] == TrialState.COMPLETE.name) & ~df["feasible"].eq(False)
    df.insert(0, "rank", complete.cumsum().where(complete).astype("Int64"))
    df["trial"] = df["trial"].astype("Int64")
    return df


# ---------------------------------------------------------------------------------------------
# Reading it: edges of the space, several studies, Markdown


def edge_flags(study: optuna.Study, top: int = 5, margin: float = 0.05) -> dict[str, str]:
    """Searched ranges whose best complete trials crowd one end: probably widen them there.

    For each numeric parameter and each range it was sampled from (a parameter under two
    branches of a choice can have two): if most of the `top` best complete trials that sampled
    from that range lie within `margin` of its width (log scale for log ranges) of one bound,
    or chose the smallest or largest of numeric choices, say which.
    """
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda t: t.values[0])  # dev loss, in Pareto mode too
    groups: dict[tuple, list[float]] = {}
    for t in complete:
        for name, dist in t.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                numbers = [c for c in dist.choices if isinstance(c, int | float)]
                if len(numbers) < 2 or len(numbers) < len(dist.choices):
                    continue
                lo, hi, log = min(numbers), max(numbers), False
            elif isinstance(dist, FloatDistribution | IntDistribution):
                lo, hi, log = dist.low, dist.high, dist.log
            else:
                continue
            values = groups.setdefault((name, lo, hi, log), [])
            if len(values) < top and lo < hi:
                values.append(float(t.params[name]))
    flags: dict[str, str] = {}
    for (name, lo, hi, log), values in groups.items():
        if len(values) < 2:
            continue
        scale = math.log if log else float
        pos = [(scale(v) - scale(lo)) / (scale(hi) - scale(lo)) for v in values]
        for side, bound, near in (("low", lo, sum(x <= margin for x in pos)),
                                  ("high", hi, sum(x >= 1 - margin for x in pos))):
            if near > len(pos) / 2:
                flags[f"{name} in {lo:g}..{hi:g}"] = (
                    f"{near} of the {len(pos)} best trials sit at the {side} edge ({bound:g}) "
                    f"of {name}'s range {lo:g}..{hi:g}: consider widening it")
    return flags


def combine(boards: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Several studies' leaderboards as one table, with a study column, ranked together."""
    df = pd.concat([b.assign(study=name) for name, b in boards.items()], ignore_index=True)
    df = df.drop(columns=["rank"])
    order = df["state"].map(_STATE_ORDER).fillna(len(_STATE_ORDER))
    loss = df["best_dev_loss"].astype(float).fillna(math.inf)
    df = (df.assign(_order=order, _loss=loss).sort_values(["_order", "_loss"], kind="stable")
            .drop(columns=["_order", "_loss"]).reset_index(drop=True))
    complete = df["state"] == TrialState.COMPLETE.name
    df.insert(0, "rank", complete.cumsum().where(complete).astype("Int64"))
    return df[["rank", "study", *[c for c in df.columns if c not in ("rank", "study")]]]


def to_markdown(df: pd.DataFrame, columns: Sequence[str], top: int | None = None) -> str:
    """A Markdown table of `columns` (the first `top` rows), numbers to 4 significant digits."""
    rows = df.head(top) if top else df
    cols = [c for c in columns if c in rows.columns]

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for _, r in rows.iterrows()]
    return "\n".join(lines)


def first_ranked(df: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The rows down to the `n`-th ranked trial, reference rows among them kept."""
    if not n:
        return df
    ranked = df.index[df["rank"].notna()][:n]
    return df.loc[: ranked[-1]] if len(ranked) else df.head(0)


@dataclass(frozen=True)
class Board:
    """One study's leaderboard and what to say about it."""

    name: str
    table: pd.DataFrame
    searched: Sequence[str]  # the study's searched parameters
    notes: Sequence[str]  # edge flags: ranges to widen


def board(name: str, study: optuna.Study, searched: Sequence[str],
          references: Sequence[Any] = (), pareto_metric: str | None = None) -> Board:
    """A study's leaderboard, its searched parameters and its edge flags."""
    return Board(name, build(study, references, pareto_metric), tuple(searched),
                 tuple(f"{name}: {v}" for v in edge_flags(study).values()))


def to_csv(df: pd.DataFrame) -> str:
    """The leaderboard as CSV, numbers to 6 significant digits (the losses' noise is larger)."""
    return df.to_csv(index=False, float_format="%.6g")


def render(boards: Sequence[Board], fmt: str = "csv", n: int | None = None) -> str:
    """One table of one or several studies (a study column then), as CSV or Markdown (the
    ranking columns and the searched parameters only), down to the `n`-th ranked trial."""
    df = combine({b.name: b.table for b in boards}) if len(boards) > 1 else boards[0].table
    df = first_ranked(df, n)
    if fmt == "csv":
        return to_csv(df)
    searched = list(dict.fromkeys(p for b in boards for p in b.searched))
    marks = [c for c in ("feasible", "pareto") if c in df and df[c].eq(False).any()]
    columns = ["rank", "study", "trial", "state", *marks, "model", "best_dev_loss", "best_step",
               *[p for p in searched if p not in FIRST_COLUMNS], "n_params", "duration_s"]
    return to_markdown(df, columns) + "\n"
