"""finalize.ensemble: the final model averages the chosen config's models over all seeds, and
its trial's own model from the search with them when it can stand beside them.

No training is thrown away, and the trial's lucky seed decides nothing: the choice was made on
the fresh seeds alone. The ensemble's next-character distribution is the average of its
members' (`harness.training.model.Ensemble`), so it samples and scores like one MLP.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.config import StudySpec
from harness.config.hparams import HParams
from harness.final.candidates import Candidate
from harness.final.choose import Choice, Context, loss
from harness.final.result import FinalResult, Line, Metric, Row, Section
from harness.search.objective import TRIAL_MODEL_ARTIFACT
from harness.search.records import TrialRecord, records
from harness.tracking import RunArtifacts, open_tracker
from harness.training.data import load_search_data
from harness.training.model import MLP, Ensemble, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialModel:
    """The chosen trial's own model, trained in the search (kept by its MLflow run)."""

    seed: int
    dev_loss: float  # read again on dev here
    model: MLP


@dataclass(frozen=True)
class EnsembleSection(Section):
    """The ensemble's dev and test loss; the trial's own model's, when it is a member."""

    KEY: ClassVar[str] = "ensemble"
    ORDER: ClassVar[int] = 10
    FIELDS: ClassVar[Mapping[str, Any]] = {
        "ensemble_dev_loss": None, "ensemble_test_loss": None, "trial_model_seed": None,
        "trial_model_dev_loss": None, "trial_model_test_loss": None}

    ensemble_dev_loss: float
    ensemble_test_loss: float
    trial_model_seed: int | None = None
    trial_model_dev_loss: float | None = None
    trial_model_test_loss: float | None = None

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> EnsembleSection | None:
        if d.get("ensemble_test_loss") is None:
            return None
        return cls(float(d["ensemble_dev_loss"]), float(d["ensemble_test_loss"]),
                   d.get("trial_model_seed"), d.get("trial_model_dev_loss"),
                   d.get("trial_model_test_loss"))

    def members(self, r: FinalResult) -> int:
        return len(r.seeds) + (self.trial_model_seed is not None)

    def member_words(self, r: FinalResult) -> str:
        return f" and trial {r.chosen_trial}'s own" if self.trial_model_seed is not None else ""

    def lines(self, r: FinalResult) -> list[Line]:
        out = []
        if self.trial_model_test_loss is not None:
            out.append(("trial's", f"dev {self.trial_model_dev_loss:.4f}, test "
                                   f"{self.trial_model_test_loss:.4f} (trial {r.chosen_trial}'s "
                                   f"own model, seed {self.trial_model_seed}, trained in the "
                                   "search)"))
        saved = "the saved model: " if r.is_saved(self) else ""
        out.append(("ensemble", f"dev {self.ensemble_dev_loss:.4f}, test "
                                f"{self.ensemble_test_loss:.4f} ({saved}"
                                f"{r.member_words()} averaged)"))
        return out

    def table_rows(self, r: FinalResult) -> list[Row]:
        rows = []
        if self.trial_model_test_loss is not None and self.trial_model_dev_loss is not None:
            rows.append((f"MLP, trial {r.chosen_trial}'s own (seed {self.trial_model_seed}, "
                         "from the search)", self.trial_model_dev_loss,
                         self.trial_model_test_loss))
        saved = " (the saved model)" if r.is_saved(self) else ""
        rows.append((f"MLP, {r.member_words()} averaged{saved}",
                     self.ensemble_dev_loss, self.ensemble_test_loss))
        return rows

    def status_words(self, r: FinalResult) -> str:
        return f", ensemble of {r.members} models {self.ensemble_test_loss:.4f}"

    def metrics(self) -> list[Metric]:
        out: list[Metric] = [("ensemble_dev_loss", self.ensemble_dev_loss, None),
                             ("ensemble_test_loss", self.ensemble_test_loss, None)]
        if self.trial_model_test_loss is not None and self.trial_model_dev_loss is not None:
            out += [("trial_model_dev_loss", self.trial_model_dev_loss, None),
                    ("trial_model_test_loss", self.trial_model_test_loss, None)]
        return out

    def registry_tags(self) -> dict[str, str]:
        return {"ensemble_test_loss": f"{self.ensemble_test_loss:.6f}"}


class EnsembleRule:
    """The FinalRule of finalize.ensemble."""

    name = EnsembleSection.KEY

    def applies(self, spec: StudySpec) -> bool:
        return spec.finalize.ensemble

    def apply(self, ctx: Context, choice: Choice) -> Choice:
        cand = choice.candidate
        kept = trial_model(ctx.spec, ctx.study, cand, ctx.seeds)
        ensemble = Ensemble(cand.models + ([kept.model] if kept else []))
        dev = load_search_data(ctx.spec.data, cand.hparams.context_length).dev
        tested: dict[str, MLP | Ensemble] = {"ensemble": ensemble}
        if kept is not None:
            tested["trial_model"] = kept.model
        return choice.with_(model=ensemble, tested=tested,
                            dev_losses={"ensemble": loss(ensemble, dev)}, notes={self.name: kept})

    def section(self, choice: Choice, test_losses: Mapping[str, float]) -> EnsembleSection:
        kept: TrialModel | None = choice.notes[self.name]
        return EnsembleSection(choice.dev_losses["ensemble"], test_losses["ensemble"],
                               kept.seed if kept else None, kept.dev_loss if kept else None,
                               test_losses.get("trial_model"))


def trial_model(spec: StudySpec, study: Any, cand: Candidate,
                seeds: Sequence[int]) -> TrialModel | None:
    """The candidate's trial's own model, as its MLflow run keeps it, on the device of the
    candidate's retrained models; None (and why, logged) when it cannot stand beside them:
    a trial of an earlier study, one that ran other steps than the retrainings, a seed that
    was retrained anyway, or no readable model in its run."""
    r = records(study)[cand.trial]
    seed = int(r.hparams.get("seed", 0))
    why = ("it is an earlier study's (warm_start)" if r.warm_from else
           f"it ran {r.steps} steps, the retrainings {cand.steps}" if r.steps != cand.steps else
           f"its seed {seed} is among the retrained ones" if seed in seeds else None)
    model, why = (None, why) if why else _kept_model(spec, r)
    if model is None:
        log.warning("trial %d's own model is not in the final ensemble: %s", cand.trial, why)
        return None
    model = model.to(next(cand.models[0].parameters()).device)
    dev = load_search_data(spec.data, cand.hparams.context_length).dev
    return TrialModel(seed, loss(model, dev), model)


def _kept_model(spec: StudySpec, r: TrialRecord) -> tuple[MLP | None, str | None]:
    """The model trial `r`'s MLflow run keeps (on the CPU), or None and why not."""
    if not r.mlflow_run_id:
        return None, "its run is not recorded"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = RunArtifacts(open_tracker(spec), r.mlflow_run_id).download(
                TRIAL_MODEL_ARTIFACT, Path(tmp))
            loaded = load_model(path) if path is not None else None
        except Exception as exc:  # unreadable file, store unreachable, run gone
            return None, f"its model cannot be read ({exc})"
    if loaded is None:
        return None, "its run keeps no model"
    model, hp, _ = loaded
    if not isinstance(model, MLP) or hp != HParams(**r.hparams):
        return None, "its run keeps a model of another config"
    return model, None
