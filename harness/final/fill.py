"""finalize.fill: the time the search and the retrainings leave before budget.wall_time is
not left idle. It trains more seeds of the chosen config, one per process, for as many steps
as fit at the retrainings' measured pace (at most theirs, at least half: else nothing is
trained), and each joins the ensemble only if it lowers the ensemble's dev loss. The choice
was made before, without them; the test split is still read once, after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.config import StudySpec
from harness.final.candidates import Candidate
from harness.final.choose import Choice, Context, loss
from harness.final.ensemble import EnsembleSection, TrialModel
from harness.final.result import FinalResult, Line, Metric, Section
from harness.final.retrain import plan_jobs, retrain
from harness.search.records import read_record
from harness.search.stops import FINAL_OVERHEAD_S
from harness.training.data import Examples, load_search_data
from harness.training.model import MLP, Ensemble

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FillSection(Section):
    """The models fill trained (seeds after the retrainings'), their steps and best dev
    losses, which joined the ensemble, and their seconds in training and in evaluations."""

    KEY: ClassVar[str] = "fill"
    ORDER: ClassVar[int] = 20
    FIELDS: ClassVar[Mapping[str, Any]] = {
        "fill_seeds": (), "fill_steps": 0, "fill_dev_losses": (), "fill_kept": (),
        "fill_train_s": (), "fill_eval_s": ()}

    fill_seeds: tuple[int, ...]
    fill_steps: int
    fill_dev_losses: tuple[float, ...]
    fill_kept: tuple[bool, ...]
    fill_train_s: tuple[float, ...]
    fill_eval_s: tuple[float, ...]

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> FillSection | None:
        if not d.get("fill_seeds"):  # absent in older records, empty when none trained
            return None
        return cls(tuple(d["fill_seeds"]), d["fill_steps"],
                   *(tuple(d.get(k, ())) for k in ("fill_dev_losses", "fill_kept",
                                                    "fill_train_s", "fill_eval_s")))

    def members(self, r: FinalResult) -> int:
        return sum(self.fill_kept)

    def member_words(self, r: FinalResult) -> str:
        kept = sum(self.fill_kept)
        return (f" and {kept} of {self.fill_steps} steps on more seeds (finalize.fill)"
                if kept else "")

    def lines(self, r: FinalResult) -> list[Line]:
        joined = [str(s) for s, k in zip(self.fill_seeds, self.fill_kept, strict=True) if k]
        return [("filled", f"seeds {', '.join(map(str, self.fill_seeds))} ({self.fill_steps} "
                           "steps, the time left): dev "
                           + ", ".join(f"{d:.4f}" for d in self.fill_dev_losses)
                           + f"; joined the ensemble: {', '.join(joined) or 'none'}")]

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        for j, dev in enumerate(self.fill_dev_losses):
            out += [("fill_dev_loss", dev, j), ("fill_kept", float(self.fill_kept[j]), j)]
        return [*out, ("fill_steps", float(self.fill_steps), None)]


class FillRule:
    """The FinalRule of finalize.fill (after the ensemble's: it grows that ensemble)."""

    name = FillSection.KEY

    def applies(self, spec: StudySpec) -> bool:
        return spec.finalize.fill

    def apply(self, ctx: Context, choice: Choice) -> Choice:
        """More seeds of the chosen config in the time left before the study's wall time,
        less FINAL_OVERHEAD_S for what follows; `choice` unchanged when too little is left."""
        record = read_record(ctx.study)
        cand = choice.candidate
        if not isinstance(choice.model, Ensemble) or record is None or record.wall_time is None:
            return choice
        left_s = record.timeout_start + record.wall_time - FINAL_OVERHEAD_S - time.time()
        steps = fill_steps(left_s, ctx.step_s, cand.steps, ctx.spec.budget.eval_every)
        if not steps:
            log.info("finalize.fill: %.0f s left, too few for half a retraining (%d steps at "
                     "%.1f ms each)", left_s, cand.steps, 1e3 * ctx.step_s)
            return choice
        kept_trial: TrialModel | None = choice.notes.get(EnsembleSection.KEY)
        first = max([*ctx.seeds, kept_trial.seed if kept_trial else 0]) + 1
        extra = Candidate(cand.trial, cand.hparams, cand.steps_per_sec, steps)
        jobs = plan_jobs([extra], range(first, first + max(1, ctx.workers)))
        processes = min(ctx.workers, len(jobs))
        if ctx.observer:
            ctx.observer.filling(jobs, processes, left_s)
        retrain(ctx.spec, [extra], jobs, device=ctx.device, processes=processes,
                observer=ctx.observer)
        dev = load_search_data(ctx.spec.data, cand.hparams.context_length).dev
        ensemble, dev_loss, kept = grow(choice.model, extra.models, dev)
        section = FillSection(tuple(j.seed for j in jobs), steps, tuple(extra.dev_losses),
                              kept, tuple(r.train_s for r in extra.retrained),
                              tuple(r.eval_s for r in extra.retrained))
        return choice.with_(model=ensemble, tested={"ensemble": ensemble},
                            dev_losses={"ensemble": dev_loss}, notes={self.name: section})

    def section(self, choice: Choice, test_losses: Mapping[str, float]) -> FillSection | None:
        section: FillSection | None = choice.notes.get(self.name)
        return section


def grow(ensemble: Ensemble, models: Sequence[MLP],
         dev: Examples) -> tuple[Ensemble, float, tuple[bool, ...]]:
    """`ensemble` with each of `models` that lowers its dev loss, judged in order with those
    taken before it; its dev loss, and which were taken."""
    members, best = ensemble.models, loss(ensemble, dev)
    kept = []
    for model in models:
        grown = loss(Ensemble([*members, model]), dev)
        kept.append(grown < best)
        if kept[-1]:
            members, best = [*members, model], grown
    return Ensemble(members), best, tuple(kept)


def fill_steps(left_s: float, step_s: float, steps: int, eval_every: int) -> int:
    """Steps of a finalize.fill model in `left_s` seconds at `step_s` each: whole evaluation
    intervals, at most `steps` (a retraining's); 0 when less than half of `steps` fit."""
    fit = min(steps, int(max(left_s, 0.0) / step_s) // eval_every * eval_every)
    return fit if fit >= steps / 2 else 0
