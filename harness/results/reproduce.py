"""Retrain one recorded trial and compare: does its result come back?

The trial's recorded config (its seed included) is trained again with the same training
function, on the same torch thread count, to the step the trial reached, and its dev-loss curve
is compared point by point with the recorded one. On a CPU with the same threads and packages
the curves agree to 1e-6; elsewhere they differ by about the seed noise, and the provenance
differences (recorded by the trial's MLflow run against this process) say why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from harness.config import StudySpec, hparams
from harness.errors import CannotReproduce, TrackingError
from harness.search import data_guard, records
from harness.search.liveness import load_study
from harness.search.records import TrialRecord
from harness.tracking import open_tracker
from harness.training.data import load_search_data, sealed_test_split
from harness.training.train import Evaluation, train
from harness.util import provenance

log = logging.getLogger(__name__)

TOLERANCE = 1e-6  # the same machine kind, threads and packages: equal to this


@dataclass(frozen=True)
class Reproduction:
    """A recorded trial's curve against the retrained one."""

    trial: int
    steps: int  # steps retrained (where the trial stopped)
    recorded: float  # the trial's best dev loss
    reproduced: float
    max_difference: float  # over the evaluations both have
    threads: int  # torch threads of this retraining
    recorded_threads: int | None
    differences: dict[str, tuple[str, str]] = field(default_factory=dict)  # provenance
    seed_noise: float | None = None  # the final model's dev std over seeds, when finalized

    @property
    def matches(self) -> bool:
        """Equal to 1e-6: the same machine kind, threads and packages."""
        return self.max_difference <= TOLERANCE

    @property
    def within_noise(self) -> bool:
        """Elsewhere: the best losses differ by no more than twice the recorded seed noise."""
        return self.seed_noise is not None and \
            abs(self.recorded - self.reproduced) <= 2 * self.seed_noise


def reproduce(spec: StudySpec, number: int, device: str = "cpu",
              allow_data_change: bool = False) -> Reproduction:
    """Retrain trial `number` of the spec's study and compare it with its record (on the
    study's data: other data raises DataChanged, unless `allow_data_change`)."""
    study = load_study(spec)
    if (record := records.read_record(study)) is not None:
        data_guard.check(spec, study, record, allow_data_change)
    recs = records.records(study)
    if not 0 <= number < len(recs):
        raise CannotReproduce(f"study {spec.name!r} has no trial {number} "
                              f"(trials 0..{len(recs) - 1})")
    rec = recs[number]
    if rec.config is None or not rec.intermediate:
        raise CannotReproduce(f"trial {number} never reported a dev loss: nothing to compare")
    hp = hparams.make(dict(rec.config))
    last = max(rec.intermediate)
    # The schedule depends on the trial's total steps: a complete trial ran all of them.
    total = rec.steps if rec.state.name == "COMPLETE" and rec.steps else spec.budget.steps
    threads = rec.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    def stop_at_last(ev: Evaluation) -> bool:
        return ev.step >= last

    with sealed_test_split():
        data = load_search_data(spec.data, hp.context_length)
        result = train(hp, data, steps=total, eval_every=spec.budget.eval_every,
                       on_eval=stop_at_last, device=device)
    again = dict(result.dev_curve)
    common = sorted(set(again) & set(rec.intermediate))
    gap = max((abs(again[s] - rec.intermediate[s]) for s in common), default=float("inf"))
    final = records.read_final(study)
    return Reproduction(number, result.steps, min(rec.intermediate.values()),
                        result.best_dev_loss, gap, threads, rec.threads,
                        provenance.differences(_recorded_provenance(spec, rec),
                                               provenance.collect()),
                        seed_noise=final["dev_std"] if final else None)


def _recorded_provenance(spec: StudySpec, rec: TrialRecord) -> dict[str, str]:
    """The provenance tags of the trial's MLflow run; empty when they cannot be read."""
    if not rec.mlflow_run_id:
        return {}
    try:
        tags = open_tracker(spec).tags(rec.mlflow_run_id)
    except TrackingError as exc:
        log.warning("the provenance of trial %d cannot be read: %s", rec.number, exc)
        return {}
    return {k: v for k, v in tags.items() if k.startswith(provenance.PREFIX)}
