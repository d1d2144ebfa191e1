"""The one evaluation on the test split, recorded together with the result it belongs to.

This module is the only caller of `harness.training.data.load_test_examples` and
`load_test_words`: nothing else in the harness reads the test split, and a search cannot even
import this floor. Each evaluation is counted by a take of `TEST_COUNTER` in the study's
storage, and that one atomic write holds the whole result: a process killed after it leaves a
result that the next finalize publishes, never one that needs the test split read again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import optuna

from harness.config import StudySpec
from harness.final.choose import Choice, loss
from harness.final.result import FinalResult
from harness.search import claims
from harness.training import baseline
from harness.training.baseline import Reference
from harness.training.data import load_test_examples, load_test_words
from harness.util import paths

TEST_COUNTER = "test-evaluation"  # one take per evaluation of the test split
_RESULT = "result"  # the take's attr: the FinalResult it belongs to


@dataclass(frozen=True)
class Tested:
    """The readings of the test split."""

    losses: list[float]  # each seed's model of the chosen config, in seed order
    named: Mapping[str, float]  # the rules' models (the ensemble, the trial's own), by name
    references: list[Reference]  # the count-based models', at the same moment


def evaluate_test(spec: StudySpec, choice: Choice) -> Tested:
    """The chosen models' losses on the test split, read here and nowhere else, and the
    count-based references' at the same moment."""
    chosen = choice.candidate
    test = load_test_examples(spec.data, chosen.hparams.context_length)
    dev_results = baseline.cached(spec.data, paths.study_dir(spec.name) / "baselines.json")
    references = baseline.test_references(spec.data, load_test_words(spec.data), dev_results)
    return Tested([loss(m, test) for m in chosen.models],
                  {name: loss(m, test) for name, m in choice.tested.items()}, references)


def record(study: optuna.Study, result: FinalResult) -> FinalResult:
    """Count the evaluation that produced `result` and keep `result` with it, in one write."""
    rank, _ = claims.take(study, TEST_COUNTER, {_RESULT: result.to_dict()})
    return dataclasses.replace(result, test_evaluations=rank + 1)


def recorded(study: optuna.Study) -> FinalResult | None:
    """The result of the study's latest counted evaluation, or None when none holds one
    (none was made, or an earlier harness counted it without its result)."""
    found = claims.takes(study, TEST_COUNTER)
    if not found or _RESULT not in found[-1]:
        return None
    return dataclasses.replace(FinalResult.from_dict(found[-1][_RESULT]),
                               test_evaluations=len(found))


def count(study: optuna.Study) -> int:
    """How often the study's test split was evaluated."""
    return claims.count(study, TEST_COUNTER)
