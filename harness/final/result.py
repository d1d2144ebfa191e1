"""The final result: what finalize found, how it is recorded, and how it reads.

`FinalResult` holds what every finalize has (the chosen config, its dev and test losses per
seed, the model, the references scored on test beside it) and one `Section` per final rule that
shaped the final model (the ensemble, fill). A section records itself, says how many models it
adds to the saved one, and renders itself; the result renders the whole once, for every reader:
the CLI's report (`lines`), the Markdown report (`table_rows`), `harness status`
(`status_line`) and the final MLflow run (`metrics`, `registry_tags`).

The record (`to_dict`, final.json, the study's storage) keeps the flat keys it always had, so
results recorded by earlier versions open, and sections without a record read as absent.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.final.candidates import CandidateResult
from harness.training.baseline import Reference
from harness.util import paths

# A line of the CLI's report: a label (padded to a column) and its text.
Line = tuple[str, str]
# A row of the report's table of models: the model, its dev loss, its test loss.
Row = tuple[str, float, float]
# A metric of the final MLflow run: key, value, step (None: with the summary figures).
Metric = tuple[str, float, int | None]

_SECTIONS: dict[str, type[Section]] = {}  # every Section subclass, by KEY


class Section:
    """What one final rule adds to the result. Subclasses (frozen dataclasses whose fields are
    the rule's own figures) register themselves, in the order they are defined, so that a
    record finds its sections; every method has a neutral default."""

    KEY: ClassVar[str]  # the rule's name, e.g. "ensemble"
    FIELDS: ClassVar[Mapping[str, Any]]  # the record's keys -> their value when absent
    ORDER: ClassVar[int]  # where it reads among the sections (and its keys in the record)
    WRAPS: ClassVar[bool] = False  # the saved model wraps the models of the sections before

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SECTIONS[cls.KEY] = cls

    def to_record(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.FIELDS}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> Section | None:
        """The section from a result's record, or None when the rule did not run."""
        raise NotImplementedError

    def members(self, r: FinalResult) -> int:
        """Models this rule made the saved model hold."""
        return 0

    def member_words(self, r: FinalResult) -> str:
        """Those models in words, continuing "the N seeds' models"."""
        return ""

    def lines(self, r: FinalResult) -> list[Line]:
        return []

    def table_rows(self, r: FinalResult) -> list[Row]:
        return []

    def status_words(self, r: FinalResult) -> str:
        return ""

    def metrics(self) -> list[Metric]:
        """For the final MLflow run; a step of None logs it with the summary figures."""
        return []

    def registry_tags(self) -> dict[str, str]:
        return {}


def tuples(d: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """`d` with the lists at `keys` as tuples (JSON has no tuples)."""
    return {**d, **{k: tuple(d[k]) for k in keys if k in d}}


@dataclass(frozen=True)
class FinalResult:
    """What finalize found: the chosen config, its dev and test losses per seed, the model.
    `final.json` is its JSON form (`to_dict`/`from_dict`)."""

    study: str
    chosen_trial: int
    config: dict[str, Any]  # the saved model's config (its seed is model_seed)
    seeds: tuple[int, ...]
    steps: int
    dev_losses: tuple[float, ...]
    dev_mean: float
    dev_std: float
    test_losses: tuple[float, ...]
    test_mean: float
    test_std: float
    model_seed: int
    model_test_loss: float
    n_params: int  # one model of the chosen config (an ensemble holds one per seed)
    candidates: tuple[CandidateResult, ...]
    samples: tuple[str, ...]
    novel_share: float | None  # share of the samples that are not training words
    model_path: str
    test_evaluations: int  # times the study's test split was evaluated, this one included
    started_at: str
    finished_at: str
    mlflow_run_id: str | None = None
    commit: str = "unknown"  # the harness's git commit ("+dirty" with local changes)
    registered: str | None = None  # models:/NAME/VERSION in MLflow's Model Registry
    pick: str | None = None  # Pareto mode: the rule that picked the trial from the front
    # Count-based models scored on test at the same moment (chosen on dev): test beside test.
    references: tuple[Reference, ...] = ()
    # The final rules that shaped the saved model, by their KEY (harness.final.rules).
    sections: Mapping[str, Section] = field(default_factory=dict)

    # -- the record

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "sections"}
        for kind in sorted(_SECTIONS.values(), key=lambda k: k.ORDER):
            section = self.sections.get(kind.KEY)
            d.update(section.to_record() if section is not None else dict(kind.FIELDS))
        return json.loads(json.dumps(d, default=_plain))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinalResult:
        core = {f.name for f in dataclasses.fields(cls)} - {"sections"}
        values = tuples({k: v for k, v in d.items() if k in core},
                        ("seeds", "dev_losses", "test_losses", "samples"))
        values["candidates"] = tuple(CandidateResult(**tuples(c, ("dev_losses", "train_s",
                                                                  "eval_s")))
                                     for c in d["candidates"])
        values["references"] = tuple(Reference(**r) for r in d.get("references", ()))
        sections = {key: s for key, kind in _SECTIONS.items()
                    if (s := kind.from_record(d)) is not None}
        return cls(**values, sections=sections)

    def save(self, path: Path) -> None:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        paths.replace_whole(path, lambda partial: partial.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: Path) -> FinalResult:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    # -- what it holds

    def in_order(self) -> list[Section]:
        """The sections, in the order they read."""
        return sorted(self.sections.values(), key=lambda s: s.ORDER)

    @property
    def members(self) -> int:
        """Models in the saved one: 1, or an ensemble's (the seeds', the trial's own, ...)."""
        return sum(s.members(self) for s in self.in_order()) or 1

    @property
    def size(self) -> str:
        """The saved model's parameters, in words: "12,345", or "3 x 12,345" (an ensemble)."""
        return f"{self.members} x {self.n_params:,}" if self.members > 1 else f"{self.n_params:,}"

    def is_saved(self, section: Section) -> bool:
        """Whether `section`'s model is the saved one, not wrapped by a later section's."""
        return not any(s.WRAPS and s.ORDER > section.ORDER for s in self.sections.values())

    def member_words(self) -> str:
        """What the saved ensemble averages, in words."""
        return f"the {len(self.seeds)} seeds' models" + "".join(
            s.member_words(self) for s in self.in_order())

    # -- how it reads: the one renderer, laid out by the CLI and the report

    def lines(self) -> list[str]:
        """The finalize report, as the CLI prints it: a person reads it at a glance."""
        out: list[Line] = []
        if self.pick:
            out.append(("picked:", f"from the Pareto front by finalize.pick {self.pick}"))
        evaluated = (f"   (test split evaluated {self.test_evaluations} times)"
                     if self.test_evaluations > 1 else "")
        tail: list[Line] = [("dev loss", f"{self.dev_mean:.4f} +- {self.dev_std:.4f}"),
                            ("test loss", f"{self.test_mean:.4f} +- {self.test_std:.4f}"
                                          f"{evaluated}")]
        for section in self.in_order():
            tail += section.lines(self)
        tail += [("reference", f"{ref.model}: dev {ref.dev_loss:.4f}, test "
                               f"{ref.test_loss:.4f}")
                 for ref in self.references]  # scored on test at the same moment
        tail.append(("config:", ", ".join(f"{k}={v}" for k, v in self.config.items())))
        if self.samples:
            novel = (f"   ({self.novel_share:.0%} not in the training words)"
                     if self.novel_share is not None else "")
            tail.append(("samples:", f"{' '.join(self.samples[:10])}{novel}"))
        tail += [("model:", self.model_path),
                 ("MLflow:", f"run {self.mlflow_run_id} (the 'final model' run of the study)")]
        if self.registered:
            name = self.registered.split("/")[1]
            tail.append(("registry:", f"{self.registered}, alias champion: "
                                      f"mlflow.pyfunc.load_model('models:/{name}@champion')"))
        tail.append(("commit:", self.commit))
        candidates = [f"   {'*' if c.trial == self.chosen_trial else ' '} trial {c.trial:>4}: "
                      f"{c.dev_mean:.4f} +- {c.dev_std:.4f}" for c in self.candidates]
        return [f"final model of study {self.study} (trial {self.chosen_trial}, {self.size} "
                "parameters)", *_laid_out(out),
                "  candidates (dev loss, mean +- std over seeds "
                + ", ".join(map(str, self.seeds)) + "):", *candidates, *_laid_out(tail)]

    def table_rows(self) -> list[tuple[str, str, str]]:
        """The report's table: each model with its dev and test loss, the references last."""
        rows = [("MLP (this study)", f"{self.dev_mean:.4f} +- {self.dev_std:.4f}",
                 f"{self.test_mean:.4f} +- {self.test_std:.4f}")]
        for section in self.in_order():
            rows += [(name, f"{dev:.4f}", f"{test:.4f}") for name, dev, test in
                     section.table_rows(self)]
        return rows + [(ref.model, f"{ref.dev_loss:.4f}", f"{ref.test_loss:.4f}")
                       for ref in self.references]

    def status_line(self) -> str:
        """`harness status`'s line for the final model."""
        extra = "".join(s.status_words(self) for s in self.in_order())
        return (f"test {self.test_mean:.4f} +- {self.test_std:.4f}{extra} (trial "
                f"{self.chosen_trial}), the test split evaluated {self.test_evaluations} "
                "time(s)")

    def metrics(self) -> list[tuple[str, float, int]]:
        """(key, value, step) for the final MLflow run: each seed's figures by step, the
        sections' own, then the summary at the last step logged."""
        out: list[Metric] = [
            (key, value, j) for j, (dev, test) in
            enumerate(zip(self.dev_losses, self.test_losses, strict=True))
            for key, value in (("seed_dev_loss", dev), ("seed_test_loss", test))]
        for section in self.in_order():
            out += section.metrics()
        summary: dict[str, float] = {
            "dev_mean": self.dev_mean, "dev_std": self.dev_std, "test_mean": self.test_mean,
            "test_std": self.test_std, "n_params": self.n_params,
            "test_evaluations": self.test_evaluations}
        if self.novel_share is not None:
            summary["novel_share"] = self.novel_share
        summary |= {k: v for k, v, step in out if step is None}
        for ref in self.references:  # e.g. reference_test_loss.kneser-ney_6-gram
            key = re.sub(r"[^a-z0-9-]+", "_", ref.model.lower()).strip("_")
            summary |= {f"reference_dev_loss.{key}": ref.dev_loss,
                        f"reference_test_loss.{key}": ref.test_loss}
        steps = [(k, v, step) for k, v, step in out if step is not None]
        last = steps[-1][2] if steps else 0
        return steps + [(k, float(v), last) for k, v in summary.items()]

    def registry_tags(self) -> dict[str, str]:
        """Tags of the registered model version."""
        tags = {"dev_mean": f"{self.dev_mean:.6f}", "dev_std": f"{self.dev_std:.6f}",
                "test_mean": f"{self.test_mean:.6f}", "test_std": f"{self.test_std:.6f}",
                "chosen_trial": str(self.chosen_trial), "commit": self.commit,
                "study": self.study}
        for section in self.in_order():
            tags |= section.registry_tags()
        return tags


def _laid_out(lines: Sequence[Line]) -> list[str]:
    return [f"  {label:<10} {text}" for label, text in lines]


def _plain(o: Any) -> Any:
    """JSON for what json does not know: dataclasses as dicts."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"{type(o).__name__} is not JSON")
