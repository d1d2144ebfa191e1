"""Trials -> a ranked pandas DataFrame -> CSV.

Complete trials come first, ranked by best dev loss; pruned, failed and running trials follow,
with their best or last dev loss and the failure reason. Reference models (count-based n-grams,
harness.baseline) can stand among the complete trials as unranked REFERENCE rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from harness import hparams

_STATE_ORDER = {"COMPLETE": 0, "REFERENCE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3,
                "WAITING": 4}

FIRST_COLUMNS = ["rank", "trial", "state", "model", "best_dev_loss", "best_step", "last_dev_loss"]
LAST_COLUMNS = ["n_params", "steps", "steps_per_sec", "duration_s", "worker", "mlflow_run_id",
                "fail_reason"]
COLUMNS = FIRST_COLUMNS + list(hparams.NAMES) + LAST_COLUMNS


def _row(t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    intermediate = t.intermediate_values
    last_dev = intermediate[max(intermediate)] if intermediate else None
    best_dev = t.value if t.state == TrialState.COMPLETE else attrs.get("best_dev_loss")
    if best_dev is None and intermediate:
        best_dev = min(intermediate.values())
    best_step = attrs.get("best_step")
    if best_step is None and intermediate:
        best_step = min(intermediate, key=intermediate.__getitem__)
    duration = None
    if t.datetime_start and t.datetime_complete:
        duration = (t.datetime_complete - t.datetime_start).total_seconds()
    # Every hyperparameter: the full config the trial trained with, else what Optuna knows.
    config = attrs.get("config") or t.params
    return {
        "trial": t.number,
        "state": t.state.name,
        "model": "mlp",
        "best_dev_loss": best_dev,
        "best_step": best_step,
        "last_dev_loss": last_dev,
        **{name: config.get(name) for name in hparams.NAMES},
        "n_params": attrs.get("n_params"),
        "steps": attrs.get("steps"),
        "steps_per_sec": attrs.get("steps_per_sec"),
        "duration_s": duration,
        "worker": attrs.get("worker"),
        "mlflow_run_id": attrs.get("mlflow_run_id"),
        "fail_reason": attrs.get("fail_reason"),
    }


def build(study: optuna.Study, references: Sequence[Any] = ()) -> pd.DataFrame:
    """One row per trial, complete trials first by best dev loss, then the others.

    `references` (harness.baseline.BaselineResult) are placed among the complete trials by
    their dev loss, unranked, with state REFERENCE.
    """
    trials = study.get_trials(deepcopy=False)
    rows = [_row(t) for t in trials]
    rows += [{"state": "REFERENCE", "model": r.model, "best_dev_loss": r.dev_loss}
             for r in references]
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    order = df["state"].map(_STATE_ORDER).fillna(len(_STATE_ORDER))
    loss = df["best_dev_loss"].astype(float).fillna(math.inf)
    df = (df.assign(_order=order, _loss=loss)
            .sort_values(["_order", "_loss", "trial"], kind="stable")
            .drop(columns=["_order", "_loss"])
            .reset_index(drop=True))
    complete = df["state"] == TrialState.COMPLETE.name
    df.insert(0, "rank", complete.cumsum().where(complete).astype("Int64"))
    df["trial"] = df["trial"].astype("Int64")
    return df
