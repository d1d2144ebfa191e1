"""The one evaluation on the test split. This module is the only caller of
`harness.training.data.load_test_examples` and `load_test_words`: nothing else in the harness
reads the test split, and a search cannot even import this floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import optuna

from harness.config import StudySpec
from harness.final.choose import Choice, loss
from harness.search import claims
from harness.training import baseline
from harness.training.baseline import Reference
from harness.training.data import load_test_examples, load_test_words
from harness.util import paths

TEST_COUNTER = "test-evaluation"  # storage counter: one number per evaluation of the test split


@dataclass(frozen=True)
class Tested:
    """The readings of the test split."""

    losses: list[float]  # each seed's model of the chosen config, in seed order
    named: Mapping[str, float]  # the rules' models (the ensemble, the trial's own), by name
    evaluations: int  # the study's count of test evaluations, this one included
    references: list[Reference]  # the count-based models', at the same moment


def evaluate_test(study: optuna.Study, spec: StudySpec, choice: Choice) -> Tested:
    """The chosen models' losses on the test split, read here and nowhere else, and the
    count-based references' at the same moment. The evaluation is counted in the storage
    first."""
    evaluations = claims.next_number(study, TEST_COUNTER) + 1
    chosen = choice.candidate
    test = load_test_examples(spec.data, chosen.hparams.context_length)
    dev_results = baseline.cached(spec.data, paths.study_dir(spec.name) / "baselines.json")
    references = baseline.test_references(spec.data, load_test_words(spec.data), dev_results)
    return Tested([loss(m, test) for m in chosen.models],
                  {name: loss(m, test) for name, m in choice.tested.items()}, evaluations,
                  references)
